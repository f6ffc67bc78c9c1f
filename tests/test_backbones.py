"""Frozen backbones: feature grids, freezing, parity with the wrapped models, errors, local weights.

Tiny random-weight models (timm/diffusers classes with small configs) keep this offline and fast.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from uplift.backbones import SD15_VAE_CONFIG, Backbone, TimmViTBackbone, VAEBackbone, build_backbone
from uplift.hub import WeightsUnavailableError

DINOV2 = "vit_small_patch14_dinov2.lvd142m"
DINOV3 = "vit_small_plus_patch16_dinov3.lvd1689m"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# name -> (tiny model kwargs, patch size, prefix tokens: CLS (+ 4 registers for DINOv3))
TINY_VITS = {
    DINOV2: (dict(embed_dim=32, depth=2, num_heads=2, img_size=56), 14, 1),
    DINOV3: (dict(embed_dim=32, depth=2, num_heads=2, img_size=64), 16, 5),
}
TINY_VAE = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    sample_size=32,
)


def _vit(name: str, **kwargs) -> TimmViTBackbone:
    return TimmViTBackbone(name, pretrained=False, model_kwargs=TINY_VITS[name][0], **kwargs)


def _image(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _safetensors(module: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def vits() -> dict[str, TimmViTBackbone]:
    torch.manual_seed(0)
    return {name: _vit(name) for name in TINY_VITS}


@pytest.fixture(scope="module")
def vae() -> VAEBackbone:
    torch.manual_seed(0)
    return VAEBackbone(pretrained=False, vae_config=TINY_VAE)


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """No hub: offline mode and an empty cache. huggingface_hub reads HF_HUB_OFFLINE when imported, so
    the module constant is patched as well as the environment (otherwise each try retries ~45 s)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


# ---------------------------------------------------------------- shapes and attributes
@pytest.mark.parametrize("name", list(TINY_VITS))
def test_vit_grid_shape_non_square_batch(vits, name):
    backbone = vits[name]
    _, p, _ = TINY_VITS[name]
    assert (backbone.patch_size, backbone.feature_channels) == (p, 32)
    assert backbone.mean == pytest.approx(IMAGENET_MEAN) and backbone.std == pytest.approx(IMAGENET_STD)
    features = backbone(_image(2, 4 * p, 6 * p))
    assert features.shape == (2, 32, 4, 6)


def test_vae_grid_shape_non_square_batch(vae):
    assert (vae.patch_size, vae.feature_channels) == (2, 4)  # 2 ** (len(block_out_channels) - 1)
    assert vae(_image(2, 32, 48)).shape == (2, 4, 16, 24)


def test_vae_patch_size_follows_block_count():
    cfg = dict(TINY_VAE, block_out_channels=(8, 8, 16), down_block_types=("DownEncoderBlock2D",) * 3,
               up_block_types=("UpDecoderBlock2D",) * 3)
    backbone = VAEBackbone(pretrained=False, vae_config=cfg)
    assert backbone.patch_size == 4
    assert backbone(_image(1, 16, 24)).shape == (1, 4, 4, 6)
    # The default random-init architecture is SD1.5's: four blocks, patch 8, 4 latent channels.
    assert 2 ** (len(SD15_VAE_CONFIG["block_out_channels"]) - 1) == 8 and SD15_VAE_CONFIG["latent_channels"] == 4


# ---------------------------------------------------------------- frozen
@pytest.mark.parametrize("which", [DINOV2, DINOV3, "vae"])
def test_frozen_and_stays_in_eval_mode(vits, vae, which):
    backbone = vae if which == "vae" else vits[which]
    assert isinstance(backbone, Backbone)
    assert all(not p.requires_grad for p in backbone.parameters())
    assert not any(m.training for m in backbone.modules())
    assert backbone.train() is backbone
    assert not any(m.training for m in backbone.modules())
    holder = torch.nn.Sequential(backbone)
    holder.train()
    assert not any(m.training for m in backbone.modules())
    side = 16 if which == "vae" else 2 * backbone.patch_size
    image = _image(1, side, side).requires_grad_(True)
    assert not backbone(image).requires_grad


# ---------------------------------------------------------------- parity with the wrapped models
@pytest.mark.parametrize("name", list(TINY_VITS))
def test_vit_features_are_normed_patch_tokens(vits, name):
    backbone = vits[name]
    _, p, prefix = TINY_VITS[name]
    assert backbone.num_prefix_tokens == prefix == backbone.model.num_prefix_tokens
    image = _image(2, 3 * p, 5 * p, seed=1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = backbone.model.forward_features((image - mean) / std)
    expected = tokens[:, prefix:].reshape(2, 3, 5, 32).permute(0, 3, 1, 2)
    grid, cls = backbone(image, return_cls=True)
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(backbone(image), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(cls, tokens[:, 0], rtol=0, atol=1e-6)
    # Patch (row 1, col 4) is token prefix + 1 * 5 + 4: row-major grid.
    torch.testing.assert_close(grid[:, :, 1, 4], tokens[:, prefix + 9], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", [*TINY_VITS, "vit_small_patch14_reg4_dinov2.lvd142m"])
def test_vit_features_are_forward_features_bit_for_bit(name):
    """The backbone reads the patch grid and the CLS token through timm's forward_intermediates: exactly the
    tensors of forward_features (DINOv2's VisionTransformer with and without registers, DINOv3's Eva)."""
    torch.manual_seed(0)
    backbone = TimmViTBackbone(name, pretrained=False, model_kwargs=TINY_VITS.get(name, TINY_VITS[DINOV2])[0])
    p, prefix = backbone.patch_size, backbone.num_prefix_tokens
    assert prefix == {DINOV2: 1, DINOV3: 5}.get(name, 5)
    image = _image(2, 3 * p, 5 * p, seed=3)
    with torch.no_grad():
        tokens = backbone.model.forward_features(backbone.normalize(image))
    grid, cls = backbone(image, return_cls=True)
    assert torch.equal(grid, tokens[:, prefix:].transpose(1, 2).reshape(2, 32, 3, 5))
    assert torch.equal(cls, tokens[:, 0]) and torch.equal(backbone(image), grid)


def test_return_cls_without_cls_token_raises():
    backbone = TimmViTBackbone(DINOV2, pretrained=False, model_kwargs=dict(
        TINY_VITS[DINOV2][0], class_token=False, global_pool="avg"))
    assert backbone.num_prefix_tokens == 0
    assert backbone(_image(1, 28, 28)).shape == (1, 32, 2, 2)
    with pytest.raises(ValueError, match="no CLS token"):
        backbone(_image(1, 28, 28), return_cls=True)


def test_vae_encode_is_unscaled_posterior_mode(vae):
    image = _image(2, 32, 48, seed=2)
    assert torch.allclose(vae.normalize(image), 2 * image - 1)
    with torch.no_grad():
        expected = vae.vae.encode(2 * image - 1).latent_dist.mode()
    torch.testing.assert_close(vae.encode(image), expected, rtol=0, atol=0)
    torch.testing.assert_close(vae(image), expected, rtol=0, atol=0)
    assert vae.vae.config.scaling_factor != 1.0  # a scaled latent would differ


def test_vae_decode_returns_unit_range_image(vae):
    latents = 3 * torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(3))
    image = vae.decode(latents)
    assert image.shape == (2, 3, 32, 48)
    assert image.min() >= 0 and image.max() <= 1
    with torch.no_grad():
        raw = vae.vae.decode(latents).sample
    torch.testing.assert_close(image, ((raw + 1) / 2).clamp(0, 1))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("which", [DINOV2, DINOV3, "vae"])
def test_non_multiple_image_sides_raise(vits, vae, which):
    backbone = vae if which == "vae" else vits[which]
    p = backbone.patch_size
    for h, w in [(4 * p + 1, 4 * p), (4 * p, 6 * p - 1)]:
        with pytest.raises(ValueError, match=rf"{h}x{w} is not a multiple of the patch size {p}\b.*resize or crop"):
            backbone(_image(1, h, w))


def test_non_batch_image_raises(vits):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        vits[DINOV2](torch.rand(3, 28, 28))


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
@pytest.mark.parametrize("name", [DINOV2, DINOV3, SD15])
def test_pretrained_without_hub_raises_weights_unavailable(hub_offline, name):
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(name, pretrained=True)
    message = str(info.value)
    assert name in message
    assert "`weights: /path/to/file`" in message and "`pretrained: false`" in message


def test_missing_local_weights_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        _vit(DINOV2, weights=tmp_path / "nope.safetensors")


# ---------------------------------------------------------------- local weights
@pytest.mark.parametrize("name", list(TINY_VITS))
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_vit_local_weights_file(vits, hub_offline, tmp_path, name, suffix):
    source = vits[name]
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        _safetensors(source.model, path)
    else:
        torch.save(source.model.state_dict(), path)
    torch.manual_seed(123)  # a different random init, so equality comes from the file
    loaded = TimmViTBackbone(name, weights=path, model_kwargs=TINY_VITS[name][0])
    image = _image(2, 2 * source.patch_size, 3 * source.patch_size, seed=4)
    torch.testing.assert_close(loaded(image), source(image), rtol=0, atol=0)
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.model.training


def test_vae_local_weights_file_and_directory(vae, hub_offline, tmp_path):
    image = _image(1, 16, 24, seed=5)
    expected = vae(image)
    torch.manual_seed(123)
    from_file = build_backbone(SD15, weights=_safetensors(vae.vae, tmp_path / "vae.safetensors"), vae_config=TINY_VAE)
    assert isinstance(from_file, VAEBackbone)
    torch.testing.assert_close(from_file(image), expected, rtol=0, atol=0)
    vae.vae.save_pretrained(tmp_path / "pipeline" / "vae")  # a pipeline directory: weights in vae/
    from_dir = VAEBackbone(weights=tmp_path / "pipeline")
    torch.testing.assert_close(from_dir(image), expected, rtol=0, atol=0)
    assert all(not p.requires_grad for p in from_dir.parameters()) and not from_dir.vae.training


# ---------------------------------------------------------------- factory, import cost
def test_build_backbone_picks_the_backbone_class():
    assert isinstance(build_backbone(SD15, pretrained=False, vae_config=TINY_VAE), VAEBackbone)
    assert isinstance(build_backbone("my/local-ae", pretrained=False, kind="vae", vae_config=TINY_VAE), VAEBackbone)
    vit = build_backbone(DINOV3, pretrained=False, model_kwargs=TINY_VITS[DINOV3][0])
    assert isinstance(vit, TimmViTBackbone) and vit.patch_size == 16
    with pytest.raises(ValueError, match="Unknown backbone kind"):
        build_backbone(DINOV2, pretrained=False, kind="clip")


def test_import_stays_light():
    code = (
        "import sys, uplift, uplift.backbones, uplift.extractor, uplift.features, uplift.torchhub; "
        "print(sorted(m for m in ('timm', 'diffusers', 'lightning', 'tasks') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
