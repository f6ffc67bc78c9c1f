"""Frozen vision backbones whose feature grids UPLiFT upsamples.

Every backbone takes a ``[B, 3, H, W]`` image batch in [0, 1], applies its own input normalisation and
returns a ``[B, C, H/p, W/p]`` feature grid. Backbones are frozen: UPLiFT is trained to reproduce their
features, never to change them, so parameters never require grad and the modules stay in eval mode
(dropout off, no BatchNorm/statistics drift) even inside a model that is put in training mode.

timm and diffusers are imported only when a backbone is built, so ``import uplift`` stays light.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from uplift.blocks import check_patch_multiple
from uplift.errors import ConfigError, WeightsUnavailableError

__all__ = ["SD15_VAE_CONFIG", "Backbone", "BackboneConfig", "OriginalDINOv2Backbone", "TimmViTBackbone", "VAEBackbone",
           "backbone_kind", "build_backbone", "check_backbone_fits"]

PathLike = Union[str, Path]

# The SD1.5 VAE architecture (the hub's ``vae/config.json``), so that ``pretrained=False`` and single-file
# weights build the right network without the hub.
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


def _download_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the weights could not be fetched". The hub client, timm and diffusers
    report these as ``OSError`` subclasses; a raw HTTP-library error is added only when that library is
    loaded (if it is not imported it cannot have raised)."""
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        error = getattr(sys.modules.get(name), "HTTPError", None)
        if isinstance(error, type):
            errors.append(error)
    return tuple(errors)


def _unavailable(what: str, source: str, err: BaseException, weights_hint: str) -> WeightsUnavailableError:
    first_line = str(err).splitlines()[0] if str(err) else ""
    return WeightsUnavailableError(
        f"Could not load the pretrained weights of backbone {what} from {source}: "
        f"{type(err).__name__}: {first_line}\n"
        f"Either use a local copy of the weights (`weights: /path/to/file`, {weights_hint}) or set "
        f"`pretrained: false` (random initialisation: for tests and smoke runs only, its features are meaningless)."
    )


def _local_weights(weights: PathLike, what: str) -> Path:
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Weights for backbone {what} not found: {path}.")
    return path


class Backbone(nn.Module):
    """Base class: a frozen feature extractor with a patch size and its own input normalisation.

    Attributes:
        feature_channels: C of the feature grid.
        patch_size: p; image sides must be multiples of it, the grid is ``(H/p, W/p)``.
        mean, std: per-channel normalisation the backbone expects on [0, 1] images (``normalize``).
    """

    feature_channels: int
    patch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _set_normalisation(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        # Non-persistent buffers follow .to(device) but stay out of the state dict.
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Backbone":
        """Always eval mode: a frozen backbone must give the same features in every phase of training."""
        return super().train(False)

    def normalize(self, image01: Tensor) -> Tensor:
        """Map a [0, 1] image batch to the backbone's input."""
        return (image01 - self._mean.to(image01.dtype)) / self._std.to(image01.dtype)

    def check_image(self, image01: Tensor) -> None:
        """Raise one ``ValueError`` naming the problem and the fix for images the backbone cannot take."""
        if not isinstance(image01, Tensor) or image01.dim() != 4 or image01.shape[1] != 3:
            shape = tuple(image01.shape) if isinstance(image01, Tensor) else type(image01).__name__
            raise ValueError(f"{type(self).__name__} expects a [B, 3, H, W] image batch in [0, 1], got {shape}.")
        check_patch_multiple(*image01.shape[-2:], self.patch_size, f" of {type(self).__name__}")

    def _input(self, image01: Tensor, normalize: bool = True) -> Tensor:
        """The network's input: the [0, 1] image normalised, or with ``normalize=False`` the image as given (already
        :meth:`normalize`'s output, e.g. normalised then resized as the release's training loop does, or the raw
        [0, 1] image that JAFAR's depth probe feeds the backbone)."""
        self.check_image(image01)
        dtype = next(self.parameters()).dtype
        return self.normalize(image01.to(dtype)) if normalize else image01.to(dtype)

    def forward(self, image01: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"feature_channels={self.feature_channels}, patch_size={self.patch_size}"


class TimmViTBackbone(Backbone):
    """A timm ViT (DINOv2's ``VisionTransformer``, DINOv3's ``Eva``); features are the last block's patch
    tokens after the final norm, as an NCHW grid (timm's ``forward_intermediates``).

    Args:
        name: timm model name, e.g. ``vit_small_patch14_dinov2.lvd142m`` or ``vit_small_plus_patch16_dinov3.lvd1689m``.
        pretrained: download the weights from the hub (timm's cache); ``False``: random init.
        weights: local ``.safetensors``/``.pth``/``.bin`` state dict (timm or the original release's key
            names; timm's checkpoint filter converts them). Overrides ``pretrained``; needs no hub.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. a tiny ``embed_dim``/``depth`` for tests).
    """

    def __init__(
        self,
        name: str = "vit_small_patch14_dinov2.lvd142m",
        pretrained: bool = True,
        weights: Optional[PathLike] = None,
        model_kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        import timm
        from timm.data import resolve_data_config

        kwargs: dict[str, Any] = dict(num_classes=0, dynamic_img_size=True)
        kwargs.update(model_kwargs or {})
        self.name = name
        if weights is not None:
            # timm loads a local file through its usual pretrained path (checkpoint filter, pos-embed
            # resampling) when the pretrained config points at it; no hub access happens.
            path = _local_weights(weights, repr(name))
            overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, file=str(path))
            self.model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        elif pretrained:
            try:
                self.model = timm.create_model(name, pretrained=True, **kwargs)
            except _download_errors() as err:
                raise _unavailable(repr(name), "the Hugging Face hub (timm)", err, "a .safetensors or .pth state dict") from err
        else:
            self.model = timm.create_model(name, pretrained=False, **kwargs)

        patch = self.model.patch_embed.patch_size
        patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
        if patch[0] != patch[1]:
            raise ValueError(f"{name}: non-square patches {patch} are not supported.")
        self.patch_size = int(patch[0])
        self.feature_channels = int(self.model.num_features)
        # CLS + register tokens precede the patch tokens in both VisionTransformer and Eva.
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        self.has_cls_token = getattr(self.model, "cls_token", None) is not None
        config = resolve_data_config({}, model=self.model)
        self._set_normalisation(config["mean"], config["std"])
        self._freeze()

    def forward(self, image01: Tensor, return_cls: bool = False,
                normalize: bool = True) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """``[B, C, H/p, W/p]`` patch-token grid; with ``return_cls=True`` also the ``[B, C]`` CLS token
        after the final norm (the depth probe's global feature). ``normalize=False`` feeds the image as
        given (see :meth:`Backbone._input`)."""
        x = self._input(image01, normalize)
        if return_cls and not self.has_cls_token:
            raise ValueError(f"Backbone {self.name!r} has no CLS token; call it with return_cls=False.")
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        # timm's forward_intermediates of the last block, final norm applied: the same tensors as forward_features
        # (bit-exact for DINOv2's VisionTransformer and DINOv3's Eva, tested), already split into the NCHW patch
        # grid and the prefix (CLS + register) tokens.
        with torch.no_grad():
            (last,) = self.model.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW",
                                                       intermediates_only=True, return_prefix_tokens=return_cls)
        grid, prefix = last if return_cls else (last, None)
        if tuple(grid.shape[-2:]) != (h, w):
            raise RuntimeError(f"Backbone {self.name!r} returned a {tuple(grid.shape[-2:])} patch grid for a "
                               f"{h}x{w} grid.")
        if return_cls:
            return grid, prefix[:, 0]
        return grid


class OriginalDINOv2Backbone(Backbone):
    """A model of the original DINOv2 release (``facebookresearch/dinov2``'s ``DinoVisionTransformer``, as its
    ``torch.hub`` entries return it); features are ``forward_features``' ``x_norm_patchtokens`` as an NCHW grid.

    timm's ``vit_small_patch14_dinov2.lvd142m`` holds the same weights, but the two resample the 37x37 position
    embeddings to other grids differently (the original: bicubic by scale factors offset by 0.1, no antialias;
    timm: bicubic to the exact grid, antialiased), so their 448x448 features differ a little. Peers trained on the
    original (LoftUp) bring it as their own backbone (``Upsampler.own_backbone``); the paper's Table 5 measures
    the difference. The model is loaded by the caller (the peer's ``torch.hub`` loader, with its trust option).
    """

    def __init__(self, model: nn.Module, name: str = "facebookresearch/dinov2") -> None:
        super().__init__()
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        self.model, self.name = model, name
        patch = model.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.feature_channels = int(model.embed_dim)
        self._set_normalisation(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)  # the release's own transforms
        self._freeze()

    def forward(self, image01: Tensor, return_cls: bool = False,
                normalize: bool = True) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """``[B, C, H/p, W/p]`` patch-token grid; with ``return_cls=True`` also the normalised ``[B, C]`` CLS token.
        ``normalize=False`` feeds the image as given (see :meth:`TimmViTBackbone.forward`)."""
        x = self._input(image01, normalize)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        with torch.no_grad():
            out = self.model.forward_features(x)
        patches = out["x_norm_patchtokens"]
        if patches.shape[1] != h * w:
            raise RuntimeError(f"{self.name} returned {patches.shape[1]} patch tokens for a {h}x{w} grid.")
        grid = patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return (grid, out["x_norm_clstoken"]) if return_cls else grid


class VAEBackbone(Backbone):
    """A diffusers ``AutoencoderKL`` (SD1.5's VAE); features are the latent posterior's mode, unscaled.

    Like the reference release, features are ``encode(2x - 1).latent_dist.mode()`` WITHOUT the 0.18215
    scaling factor. ``mean``/``std`` are (0.5, 0.5), i.e. the VAE's own [-1, 1] input range, which
    :meth:`encode` applies itself; the UPLiFT VAE model is guided by the raw [0, 1] image (``no_UEP``),
    not by :meth:`normalize`'s output.

    Args:
        repo_id, subfolder: where ``AutoencoderKL.from_pretrained`` finds the weights on the hub.
        pretrained: download them; ``False``: random init from ``vae_config`` (default: SD1.5's architecture).
        weights: local weights, overriding ``pretrained``: a diffusers directory (``config.json`` and
            weights, or a pipeline directory with a ``subfolder``), or one ``.safetensors``/``.ckpt``/``.pth``
            file in diffusers or original (LDM) key names, loaded into ``vae_config``'s architecture.
        vae_config: ``AutoencoderKL`` constructor arguments for random init and single-file weights.
    """

    def __init__(
        self,
        repo_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        subfolder: Optional[str] = "vae",
        pretrained: bool = True,
        weights: Optional[PathLike] = None,
        vae_config: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.name = repo_id
        what = f"{repo_id!r} (VAE)"
        if weights is not None:
            path = _local_weights(weights, what)
            if path.is_dir():
                sub = subfolder if subfolder and not (path / "config.json").exists() else None
                self.vae = AutoencoderKL.from_pretrained(str(path), subfolder=sub)
            else:
                self.vae = self._from_single_file(path, vae_config)
        elif pretrained:
            try:
                self.vae = AutoencoderKL.from_pretrained(repo_id, subfolder=subfolder)
            except _download_errors() as err:
                source = f"the Hugging Face hub ({repo_id}/{subfolder})" if subfolder else "the Hugging Face hub"
                raise _unavailable(
                    what, source, err, "a diffusers VAE directory or one .safetensors file of its weights"
                ) from err
        else:
            self.vae = AutoencoderKL(**(SD15_VAE_CONFIG if vae_config is None else vae_config))

        self.feature_channels = int(self.vae.config.latent_channels)
        self.patch_size = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._set_normalisation((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self._freeze()

    @staticmethod
    def _from_single_file(path: Path, vae_config: Optional[dict[str, Any]]) -> nn.Module:
        """One weights file into the given architecture; original (LDM) key names are converted with
        diffusers' own single-file mapping. Offline, unlike ``from_single_file``, which fetches the config."""
        from diffusers import AutoencoderKL

        from uplift.checkpoints import read_weights_file

        vae = AutoencoderKL(**(SD15_VAE_CONFIG if vae_config is None else vae_config))
        state = read_weights_file(path)
        if set(state) != set(vae.state_dict()):
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = convert_ldm_vae_checkpoint(state, dict(vae.config))
        vae.load_state_dict(state, strict=True)
        return vae

    def encode(self, image01: Tensor, normalize: bool = True) -> Tensor:
        """``[B, latent_channels, H/p, W/p]`` latents (posterior mode, no scaling factor). ``normalize=False``:
        the image is already in [-1, 1] (:meth:`normalize`) rather than in [0, 1]."""
        x = self._input(image01, normalize)
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.mode()

    def forward(self, image01: Tensor, normalize: bool = True) -> Tensor:
        return self.encode(image01, normalize)

    def decode(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """Image in [0, 1] from unscaled latents, e.g. UPLiFT-upsampled ones; ``clamp=False`` keeps the decoder's
        overshoot (CFM's super-resolution metrics score the unclamped decode)."""
        dtype = next(self.parameters()).dtype
        with torch.no_grad():
            image = (self.vae.decode(latents.to(dtype)).sample + 1) / 2
        return image.clamp(0, 1) if clamp else image


def backbone_kind(name: str) -> str:
    """``vae`` for diffusers VAE repositories (``stable-diffusion...``, ``.../...vae...``), else ``timm``: the one
    rule that guesses a backbone's kind from its name (``kind`` set explicitly always wins)."""
    lowered = name.lower()
    return "vae" if "stable-diffusion" in lowered or "vae" in lowered.rsplit("/", 1)[-1] else "timm"


def build_backbone(name: str, pretrained: bool = True, weights: Optional[PathLike] = None, **kwargs: Any) -> Backbone:
    """The backbone for a config's name: ``kind="vae"`` (or a VAE name, :func:`backbone_kind`) gives a
    :class:`VAEBackbone`, ``kind="timm"`` a :class:`TimmViTBackbone`. Other keyword arguments go to the
    backbone's constructor."""
    kind = kwargs.pop("kind", None) or backbone_kind(name)
    if kind == "vae":
        return VAEBackbone(repo_id=name, pretrained=pretrained, weights=weights, **kwargs)
    if kind == "timm":
        return TimmViTBackbone(name, pretrained=pretrained, weights=weights, **kwargs)
    raise ValueError(f"Unknown backbone kind {kind!r}; use 'timm' or 'vae'.")


@dataclass
class BackboneConfig:
    """Which frozen backbone to upsample (read from YAML by the CLI; plain data, no Lightning).

    Attributes:
        name: a timm model name (``vit_small_patch14_dinov2.lvd142m``) or a diffusers repository
            with a VAE (``stable-diffusion-v1-5/stable-diffusion-v1-5``).
        pretrained: download the weights from the Hugging Face hub; ``false``: random init (tests).
        weights: a local weights file (or diffusers folder) instead of the hub download.
        kind: ``timm`` or ``vae``; default: :func:`backbone_kind` of the name.
        model_kwargs: timm ``create_model`` overrides, or the ``AutoencoderKL`` config for a VAE
            (e.g. a tiny ``embed_dim``/``depth`` for tests).
    """

    name: str = "vit_small_patch14_dinov2.lvd142m"
    pretrained: bool = True
    weights: Optional[str] = None
    kind: Optional[str] = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Backbone:
        kind = self.kind or backbone_kind(self.name)
        extra = {"vae_config": self.model_kwargs or None} if kind == "vae" else {"model_kwargs": self.model_kwargs or None}
        return build_backbone(self.name, pretrained=self.pretrained, weights=self.weights, kind=kind, **extra)

    @property
    def reproducible(self) -> bool:
        """Whether rebuilding from this config gives the same weights (so checkpoints may omit them)."""
        return self.pretrained or self.weights is not None


def check_backbone_fits(backbone: Backbone, config: Any, fix: Optional[str] = None, key: str = "uplift",
                        model: str = "UPLiFT") -> None:
    """The one check that an upsampler (its config: ``feature_channels``, ``patch_size``; the task argument
    ``key``) upsamples this backbone's features: one :class:`~uplift.errors.ConfigError` before any work, naming
    both sides and the fix (default: the config keys to set)."""
    problems = []
    if backbone.feature_channels != config.feature_channels:
        problems.append(f"it produces {backbone.feature_channels}-channel features but {key}.feature_channels is "
                        f"{config.feature_channels}" + ("" if fix else f" (set `{key}.feature_channels: {backbone.feature_channels}`)"))
    if backbone.patch_size != config.patch_size:
        problems.append(f"its patch size is {backbone.patch_size} but {key}.patch_size is {config.patch_size}"
                        + ("" if fix else f" (set `{key}.patch_size: {backbone.patch_size}`)"))
    if problems:
        raise ConfigError(f"Backbone {getattr(backbone, 'name', type(backbone).__name__)!r} does not fit the {model} "
                          f"model: " + "; ".join(problems) + (f". Fix: {fix}." if fix else "."))
