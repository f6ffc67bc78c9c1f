"""torch.hub entry points, with the reference release's names and arguments (``mwalmer-umd/UPLiFT``'s hubconf).

    model = torch.hub.load("<owner>/<this repository>", "uplift_dinov2_s14")   # or a local checkout, source="local"
    features = model(Image.open("image.jpg"))                                 # one 2x step, as the release (iters=1)
    model = torch.hub.load(..., "uplift_dinov2_s14", iters=4)                 # 2^4 = 16x: pixel-dense for p = 14/16

Weights: UPLiFT's from the Hugging Face hub (``UPLiFT-upsampler/...``), the backbone's through timm or diffusers
(both cached by huggingface_hub). Offline: ``weights="/path/to/uplift_dinov2-s14.safetensors"`` and
``backbone_weights="/path/to/backbone.safetensors"``. ``uplift/torchhub.py`` lists what matches the release exactly
and what differs.
"""

dependencies = ["torch", "torchvision", "timm", "safetensors", "huggingface_hub", "yaml", "numpy", "PIL"]


def uplift(variant="dinov2-s14", pretrained=True, include_extractor=True, fast=False, **kwargs):
    """Load UPLiFT.

    Args:
        variant: "dinov2-s14", "dinov3-splus16" or "sd15-vae".
        pretrained: load the released weights from the Hugging Face hub (False: random weights).
        include_extractor: True: the extractor with its backbone, called on a PIL image; False: the bare model,
            called as ``model(img, feat, outsize=None)``.
        fast: the fast inference mode (``UPLiFT.fast()``: the same values, faster).
        **kwargs: extractor options, as the release's: iters (default 1), out_size, no_transform, return_steps,
            return_base_feat, silent, auto_resize, low_mem; and this implementation's: weights (a local UPLiFT
            weights file), backbone_pretrained, backbone_weights, device, max_pixels, cache_dir.
    """
    from uplift.torchhub import load

    return load(variant, pretrained, include_extractor, fast=fast, **kwargs)


def uplift_dinov2_s14(pretrained=True, include_extractor=True, fast=False, **kwargs):
    """Load UPLiFT with the DINOv2-S/14 backbone."""
    return uplift("dinov2-s14", pretrained, include_extractor, fast=fast, **kwargs)


def uplift_dinov3_splus16(pretrained=True, include_extractor=True, fast=False, **kwargs):
    """Load UPLiFT with the DINOv3-S+/16 backbone."""
    return uplift("dinov3-splus16", pretrained, include_extractor, fast=fast, **kwargs)


def uplift_sd15_vae(pretrained=True, include_extractor=True, fast=False, **kwargs):
    """Load UPLiFT with the Stable Diffusion 1.5 VAE backbone."""
    return uplift("sd15-vae", pretrained, include_extractor, fast=fast, **kwargs)
