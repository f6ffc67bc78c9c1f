#!/usr/bin/env python3
"""Make the release-extractor parity case: the reference release's own ``UPLiFTExtractor`` (mwalmer-umd/UPLiFT
@ 85f09ee4512aacdb7ff194b5137fb65049e0dbe9), run on CPU on a real photo with a tiny random DINOv2-class ViT and a
tiny random UPLiFT (BatchNorm statistics randomised), so that every step of its pipeline is pinned down: PIL
``auto_resize``, ``ToTensor`` + ImageNet normalisation, the timm backbone's last normed patch tokens, ``iters``
UPLiFT steps and ``out_size``.

Run it with the release's package first on the path (it is also called ``uplift``) and omegaconf installed:

    PYTHONPATH=/path/to/UPLiFT-checkout:/path/to/omegaconf-site python tests/data/release_extractor/make.py

It writes, beside itself: ``photo.png`` (a 47x61 crop of scikit-image's astronaut), ``config.yaml`` (the tiny UPLiFT in
the release's format), ``uplift.safetensors`` (its weights), ``vit.safetensors`` (the tiny ViT's timm state dict) and
``expected.safetensors`` (the release's outputs; every 4th channel of the upsampled features). About 300 KB.
"""

from pathlib import Path

import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from skimage import data

import uplift  # the release's package
from uplift import UPLiFTExtractor
from uplift.extractors import vit_wrapper

HERE = Path(__file__).resolve().parent
VIT_KWARGS = dict(embed_dim=32, depth=1, num_heads=2, img_size=56)
CHANNEL_STRIDE = 4  # every 4th channel of the features is stored (like ../shared/fixtures/official)
assert Path(uplift.__file__).parent.name == "uplift" and hasattr(uplift, "UPLiFTExtractor"), "not the release"

# The release's ViT wrapper downloads pretrained weights; here: a tiny random model of the same class, kept.
real_create = timm.create_model


def tiny_create(name, pretrained=True, **kwargs):
    torch.manual_seed(1)
    model = real_create(name, pretrained=False, **kwargs, **VIT_KWARGS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(HERE / "vit.safetensors"))
    return model


vit_wrapper.timm.create_model = tiny_create


class NoEvent:  # the release times every call with CUDA events, which a CPU-only machine cannot record
    def __init__(self, *args, **kwargs):
        pass

    def record(self):
        pass


torch.cuda.Event = NoEvent

config = yaml.safe_load((Path(uplift.__file__).parent / "configs" / "uplift_dinov2-s14.yaml").read_text())
config["backbone"]["channel"] = 32
for i, width in enumerate((4, 4, 8, 8, 8)):
    config["uplift"]["encoder"][f"block_{i}"]["hc"] = [width]
for block in ("block_0", "block_1"):
    config["uplift"]["decoder"][block]["hc"] = [8]
(HERE / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

from omegaconf import OmegaConf  # noqa: E402

torch.manual_seed(0)
model = uplift.UPLiFT(32, 14, OmegaConf.create(config).uplift)
with torch.no_grad():
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(HERE / "uplift.safetensors"))

Image.fromarray(data.astronaut()[100:147, 150:211]).save(HERE / "photo.png")
image = Image.open(HERE / "photo.png")
expected = {}
for name, kwargs in {"iters4": dict(iters=4), "iters2_outsize47": dict(iters=2, out_size=47)}.items():
    extractor = UPLiFTExtractor(config=str(HERE / "config.yaml"), weights=str(HERE / "uplift.safetensors"),
                                return_base_feat=True, silent=True, **kwargs)
    with torch.no_grad():
        features, base = extractor(image)
    expected[f"{name}.features"] = features[:, ::CHANNEL_STRIDE].contiguous()
    expected[f"{name}.base"] = base.contiguous()
save_file(expected, str(HERE / "expected.safetensors"),
          metadata={"source": "mwalmer-umd/UPLiFT@85f09ee4512aacdb7ff194b5137fb65049e0dbe9 UPLiFTExtractor, CPU"})
print({k: tuple(v.shape) for k, v in expected.items()})
