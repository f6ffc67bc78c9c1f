"""Every row of Table 1 behind one interface: ``upsampler(image, features, output_size) -> features``.

``image`` is the backbone-normalised image the features were computed from (``[B, 3, H, W]``),
``features`` the backbone grid (``[B, C, h, w]``) and the result is ``[B, C, *output_size]``.
Upsamplers are chosen in YAML by class path, e.g.::

    upsampler:
      class_path: uplift.upsamplers.UPLiFTUpsampler
      init_args: {weights: dinov2-s14}

The published peers (JAFAR, AnyUp, LoftUp, FeatUp-JBU) load through ``torch.hub`` from their own
repositories when the user has them; when their code or weights cannot be had,
:class:`UpsamplerUnavailableError` says so and the Table 1 driver reports that row as unavailable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uplift.errors import UpsamplerUnavailableError

__all__ = [
    "Upsampler",
    "Nearest",
    "Bilinear",
    "UPLiFTUpsampler",
    "TorchHubUpsampler",
    "UpsamplerUnavailableError",
    "JAFAR",
    "AnyUp",
    "LoftUp",
    "FeatUpJBU",
]




class Upsampler(nn.Module):
    """Base class. Subclasses implement :meth:`upsample`; ``forward`` validates and resizes."""

    #: shown in tables
    label: str = "upsampler"

    def forward(self, image: Tensor, features: Tensor, output_size: Sequence[int]) -> Tensor:
        if features.dim() != 4 or image.dim() != 4:
            raise ValueError(f"expected [B, 3, H, W] image and [B, C, h, w] features, got {tuple(image.shape)} "
                             f"and {tuple(features.shape)}.")
        size = (int(output_size[0]), int(output_size[1]))
        out = self.upsample(image, features, size)
        if tuple(out.shape[-2:]) != size:  # over-upsampled (e.g. 16x on a patch-14 grid): resize down
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False, antialias=True)
        return out

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Nearest(Upsampler):
    label = "Nearest"

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return F.interpolate(features, size=output_size, mode="nearest")


class Bilinear(Upsampler):
    label = "Bilinear"

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return F.interpolate(features, size=output_size, mode="bilinear", align_corners=False)


class UPLiFTUpsampler(Upsampler):
    """UPLiFT from any weights reference (:func:`uplift.checkpoints.load_uplift`): released weights
    (``dinov2-s14``, ...), a ``save_pretrained`` directory, a ``.safetensors`` file (``config`` for a bare
    release file) or a ``uplift fit`` checkpoint (``.ckpt`` of the predictive task). Runs ``steps`` 2x steps (default:
    enough for one feature per pixel) and resizes to the requested size (16x on patch 14 then
    bilinear down to 448, as the paper does)."""

    label = "UPLiFT"

    def __init__(self, weights: str = "dinov2-s14", steps: Optional[int] = None, config: Optional[str] = None) -> None:
        from uplift.checkpoints import load_uplift

        super().__init__()
        self.weights, self.steps = weights, steps
        self.model = load_uplift(weights, config=config)

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return self.model(image, features, steps=self.steps)


class TorchHubUpsampler(Upsampler):
    """A published upsampler loaded with ``torch.hub.load(repo, entry, **kwargs)``.

    ``call`` says how the loaded module is called: ``image_features`` (AnyUp-style
    ``m(image, features, output_size=...)``), ``features_image`` (LoftUp/JAFAR-style
    ``m(features, image)``) or ``featup`` (``m.upsampler(features, image)``, 16x).
    """

    def __init__(self, repo: str, entry: str, call: str = "image_features", label: Optional[str] = None,
                 kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        if call not in ("image_features", "features_image", "featup"):
            raise ValueError(f"call must be image_features, features_image or featup, got {call!r}.")
        self.repo, self.entry, self.call = repo, entry, call
        self.label = label or entry
        try:
            self.model = torch.hub.load(repo, entry, trust_repo=True, **(kwargs or {}))
        except Exception as err:  # offline, repo not found, missing dependency: the row is unavailable
            raise UpsamplerUnavailableError(
                f"{self.label}: torch.hub.load({repo!r}, {entry!r}) failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). This row needs the peer's code and weights "
                f"(network access once, then torch.hub's cache in {torch.hub.get_dir()})."
            ) from err
        self.model.eval().requires_grad_(False)

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        if self.call == "image_features":
            return self.model(image, features, output_size=output_size)
        if self.call == "features_image":
            return self.model(features, image)
        return self.model.upsampler(features, image)


class JAFAR(TorchHubUpsampler):
    """JAFAR (official code; the DINOv2-S/14 model)."""

    def __init__(self, hub_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__("PaulCouairon/JAFAR", "jafar", call="features_image", label="JAFAR", kwargs=hub_kwargs)


class AnyUp(TorchHubUpsampler):
    """AnyUp (official ``wimmerth/anyup`` hub entry ``anyup``, trained on DINOv2-S/14)."""

    def __init__(self, hub_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__("wimmerth/anyup", "anyup", call="image_features", label="AnyUp", kwargs=hub_kwargs)


class LoftUp(TorchHubUpsampler):
    """LoftUp (official ``andrehuang/loftup`` hub entry ``loftup_dinov2s``)."""

    def __init__(self, hub_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__("andrehuang/loftup", "loftup_dinov2s", call="features_image", label="LoftUp",
                         kwargs={"pretrained": True, **(hub_kwargs or {})})


class FeatUpJBU(TorchHubUpsampler):
    """FeatUp's JBU stack for DINOv2-S/14 without backbone normalisation (``use_norm=False``), as the paper."""

    def __init__(self, hub_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__("mhamilton723/FeatUp", "dinov2", call="featup", label="FeatUp",
                         kwargs={"use_norm": False, **(hub_kwargs or {})})


# ------------------------------------------------------------------------------------------ LiFT
__all__ += ["LIFT_CHECKPOINT", "LiFT", "LiFT2x"]

#: Where ``uplift fit --config configs/lift_dinov2_s14.yaml`` leaves the trained LiFT.
LIFT_CHECKPOINT = "runs/lift_dinov2_s14/checkpoints/last.ckpt"


class LiFT(Upsampler):
    """LiFT run four times (16x: 32x32 -> 512x512 on a 448 image) and resized to the output size, as
    the paper's "LiFT" row (after JAFAR). Weights: a ``uplift fit`` checkpoint of ``tasks.LiFTTask``
    or a :func:`uplift.lift.save_lift` directory; there is no official DINOv2-S/14 LiFT."""

    label = "LiFT"
    steps = 4

    def __init__(self, weights: str = LIFT_CHECKPOINT) -> None:
        super().__init__()
        from uplift.lift import load_lift

        self.weights = weights
        if not Path(weights).exists():
            raise UpsamplerUnavailableError(
                f"{self.label}: no trained LiFT at {weights}; train it with `uplift fit --config "
                f"configs/lift_dinov2_s14.yaml` (it writes {LIFT_CHECKPOINT}) or pass its path as `weights`."
            )
        self.model = load_lift(weights)

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return self.model(image, features, steps=self.steps)  # forward() resizes 512 -> 448 (bilinear, antialiased)


class LiFT2x(LiFT):
    """One LiFT step (2x), then bilinear upsampling to the output size: the paper's "LiFT-2x" row."""

    label = "LiFT-2x"
    steps = 1

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        x = self.model(image, features, steps=self.steps)
        return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
