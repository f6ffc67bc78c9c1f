"""Typed configuration of an UPLiFT model, its presets, and the reader for the release's YAML format.

The dataclasses are plain, so jsonargparse/LightningCLI read them from YAML directly, e.g.::

    model:
      uplift:
        feature_channels: 384
        patch_size: 14
        neighbourhood: 17
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from uplift.attender import NEIGHBOURHOODS
from uplift.blocks import BlockType, Norm
from uplift.errors import ConfigError

__all__ = ["BlockGroupConfig", "RefinerConfig", "UPLiFTConfig", "PRESETS", "official_to_config", "load_official_config",
           "unknown_preset"]


@dataclass
class BlockGroupConfig:
    """A group of conv blocks: one block per entry of ``widths``."""

    widths: list[int]
    block: BlockType = "single"


@dataclass
class RefinerConfig:
    """Post-attender refiner (VAE model): blocks on ``[attender out, encoder guide, noise]``, then 1x1."""

    widths: list[int]
    noise_channels: int = 0
    noise_scale: float = 1.0
    #: which encoder group's output guides the refiner (Python index; -1 = the last group)
    encoder_group: int = -1


def _dino_encoder() -> list[BlockGroupConfig]:
    return [BlockGroupConfig([w]) for w in (16, 32, 64, 128, 128)]


@dataclass
class UPLiFTConfig:
    """Architecture of an UPLiFT model. Defaults are the released DINOv2-S/14 model.

    Attributes:
        feature_channels: width C of the backbone features being upsampled.
        patch_size: backbone patch size p (pixels per feature token). For p that is not a power of
            two (14) the image is resized so that each token covers 2^ceil(log2 p) pixels.
        encoder: dense image encoder, one entry per group (no downsampling anywhere).
        decoder_low: decoder blocks at the input resolution (guided by the last encoder group).
        decoder_high: decoder blocks after the 2x transposed conv (guided by the second-to-last).
        norm: ``batch`` (predictive models) or ``layer`` (the deeper VAE model).
        neighbourhood: Local Attender neighbourhood size n; ``None``: no Local Attender (the paper's
            "No LA" ablation, the release's ``attender: -1``): the decoder ends in a 1x1 convolution
            to the feature channels plus a channel residual, and its output is the step's output.
        noise_channels / noise_scale: N(0, scale^2) channels appended at both decoder stages.
        refiner: optional post-attender refiner.
        raw_image_guide: the encoder sees the raw [0, 1] image rather than the backbone-normalised
            one (release option ``no_UEP``; the VAE model).
    """

    feature_channels: int = 384
    patch_size: int = 14
    encoder: list[BlockGroupConfig] = field(default_factory=_dino_encoder)
    decoder_low: BlockGroupConfig = field(default_factory=lambda: BlockGroupConfig([64], "double"))
    decoder_high: BlockGroupConfig = field(default_factory=lambda: BlockGroupConfig([64], "double"))
    norm: Norm = "batch"
    neighbourhood: Optional[int] = 17
    noise_channels: int = 0
    noise_scale: float = 1.0
    refiner: Optional[RefinerConfig] = None
    raw_image_guide: bool = False

    def __post_init__(self) -> None:
        # Accept plain dicts (from JSON/YAML) for the nested groups.
        self.encoder = [g if isinstance(g, BlockGroupConfig) else BlockGroupConfig(**g) for g in self.encoder]
        for name in ("decoder_low", "decoder_high"):
            group = getattr(self, name)
            if isinstance(group, dict):
                setattr(self, name, BlockGroupConfig(**group))
        if isinstance(self.refiner, dict):
            self.refiner = RefinerConfig(**self.refiner)
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.feature_channels < 1:
            problems.append(f"feature_channels must be positive, got {self.feature_channels}")
        if self.patch_size < 1:
            problems.append(f"patch_size must be positive, got {self.patch_size}")
        if len(self.encoder) < 2:
            problems.append(f"the encoder needs at least 2 groups (the decoder uses the last two), got {len(self.encoder)}")
        if self.neighbourhood is not None and self.neighbourhood not in NEIGHBOURHOODS:
            problems.append(f"neighbourhood must be one of {sorted(NEIGHBOURHOODS)} or None (no Local Attender), "
                            f"got {self.neighbourhood}")
        if self.norm not in ("batch", "layer"):
            problems.append(f"norm must be 'batch' or 'layer', got {self.norm!r}")
        groups = [*self.encoder, self.decoder_low, self.decoder_high]
        if self.refiner is not None:
            groups.append(BlockGroupConfig(self.refiner.widths))
            if not -len(self.encoder) <= self.refiner.encoder_group < len(self.encoder):
                problems.append(f"refiner.encoder_group {self.refiner.encoder_group} is out of range for {len(self.encoder)} encoder groups")
        for group in groups:
            if not group.widths or any(w < 1 for w in group.widths):
                problems.append(f"block widths must be a non-empty list of positive ints, got {group.widths}")
            if group.block not in ("single", "double"):
                problems.append(f"block must be 'single' or 'double', got {group.block!r}")
        if self.noise_channels < 0 or (self.refiner is not None and self.refiner.noise_channels < 0):
            problems.append("noise_channels must be >= 0")
        if problems:
            raise ValueError("Invalid UPLiFT configuration: " + "; ".join(problems) + ".")

    @property
    def native_steps(self) -> int:
        """2x steps needed to reach one feature per pixel: ceil(log2(patch_size))."""
        return max(1, (self.patch_size - 1).bit_length())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UPLiFTConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown UPLiFT config keys: {sorted(unknown)}. Known keys: {sorted(cls.__dataclass_fields__)}.")
        return cls(**copy.deepcopy(data))

    @classmethod
    def preset(cls, name: str) -> "UPLiFTConfig":
        """The architecture of a released model: ``dinov2-s14``, ``dinov3-splus16`` or ``sd15-vae``."""
        if name not in PRESETS:
            raise unknown_preset(name)
        return PRESETS[name]()


def unknown_preset(name: str) -> ConfigError:
    """The error for a preset name that does not exist: every preset, and the closest one."""
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"Unknown UPLiFT preset {name!r}{hint}; the presets are {', '.join(PRESETS)}. A config can also "
                       f"be a release YAML file or a config.json.")


def _vae_preset() -> UPLiFTConfig:
    return UPLiFTConfig(
        feature_channels=4,
        patch_size=8,
        encoder=[BlockGroupConfig([w, w]) for w in (64, 128, 256, 512, 512)],
        decoder_low=BlockGroupConfig([512]),
        decoder_high=BlockGroupConfig([512, 512]),
        norm="layer",
        noise_channels=4,
        noise_scale=1.0,
        refiner=RefinerConfig(widths=[512] * 12, noise_channels=4, noise_scale=1.0, encoder_group=-1),
        raw_image_guide=True,
    )


PRESETS = {
    "dinov2-s14": lambda: UPLiFTConfig(feature_channels=384, patch_size=14),
    "dinov3-splus16": lambda: UPLiFTConfig(feature_channels=384, patch_size=16),
    "sd15-vae": _vae_preset,
}


# --------------------------------------------------------------------------------------------
# The reference release's config format (sections `backbone` and `uplift`).
# --------------------------------------------------------------------------------------------

_OFFICIAL_BLOCKS = {"SingleConv": "single", "DoubleConv": "double"}


def load_official_config(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read a release-format config from a YAML path or pass a dict through."""
    if isinstance(config, dict):
        return config
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"UPLiFT config file not found: {path}. Pass the release's YAML path or a dict.")
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a YAML mapping with sections 'backbone' and 'uplift'.")
    return data


def official_to_config(config: str | Path | dict[str, Any]) -> UPLiFTConfig:
    """Translate a config in the reference release's format into an :class:`UPLiFTConfig`.

    Only the options the released models use are supported; anything else (downsampling encoder
    stages, several decoder up-steps, no encoder sharing) is
    rejected with an error naming the option rather than silently building a different model.
    """
    data = load_official_config(config)
    missing = [k for k in ("backbone", "uplift") if k not in data]
    if missing:
        raise ValueError(f"Release config is missing section(s) {missing}; it needs 'backbone' (channel, patch) and 'uplift'.")
    backbone, up = data["backbone"], data["uplift"]
    problems: list[str] = []

    def expect(value: Any, allowed: tuple, what: str) -> None:
        if value not in allowed:
            problems.append(f"{what}={value!r} (supported: {', '.join(map(repr, allowed))})")

    expect(up.get("up_factor", 2), (2,), "uplift.up_factor")
    expect(up.get("enc_share", False), (True,), "uplift.enc_share")
    expect(up.get("attender", -1), (-1, *NEIGHBOURHOODS), "uplift.attender")
    if up.get("attender", -1) == -1:  # no Local Attender: the decoder's 1x1 output conv, with its residual
        expect(up["decoder"].get("residual_outc", True), (True,), "decoder.residual_outc")
    norms: set[str] = set()

    def group(cfg: dict[str, Any], where: str) -> BlockGroupConfig:
        expect(cfg.get("block"), tuple(_OFFICIAL_BLOCKS), f"{where}.block")
        for key, default, allowed in (("residual", True, (True,)), ("stride", 1, (1,)), ("one_by", True, (True,))):
            expect(cfg.get(key, default), allowed, f"{where}.{key}")
        norms.add(cfg.get("norm", "batch"))
        widths = list(cfg.get("hc", []))
        if cfg.get("count", len(widths)) != len(widths):
            problems.append(f"{where}.count={cfg.get('count')} but {len(widths)} widths in hc")
        return BlockGroupConfig(widths, _OFFICIAL_BLOCKS.get(cfg.get("block"), "single"))

    enc = up["encoder"]
    encoder = [group(enc["block_0"], "encoder.block_0")]
    for i in range(1, enc.get("down_steps", 0) + 1):
        expect(enc[f"down_{i}"].get("down_op"), ("none",), f"encoder.down_{i}.down_op")
        encoder.append(group(enc[f"block_{i}"], f"encoder.block_{i}"))
    dec = up["decoder"]
    expect(dec.get("up_steps"), (1,), "decoder.up_steps")
    expect(dec.get("enc_resample", "none"), ("nearest",), "decoder.enc_resample")
    expect(dec["up_1"].get("up_op"), ("tconv",), "decoder.up_1.up_op")
    expect(dec["up_1"].get("factor"), (2,), "decoder.up_1.factor")
    expect(dec["up_1"].get("residual"), ("bilinear",), "decoder.up_1.residual")
    decoder_low = group(dec["block_0"], "decoder.block_0")
    decoder_high = group(dec["block_1"], "decoder.block_1")
    refiner = None
    if "refiner" in up and up["refiner"] is not None:
        ref = up["refiner"]
        expect(ref.get("enc_resample", "none"), ("nearest",), "refiner.enc_resample")
        refiner = RefinerConfig(
            widths=group(ref["block_0"], "refiner.block_0").widths,
            noise_channels=int(ref.get("ncat_c", 0)),
            noise_scale=float(ref.get("ncat_s", 1)),
            encoder_group=int(ref.get("ref_con", -2)),
        )
    if len(norms) > 1:
        problems.append(f"mixed norms {sorted(norms)} (one norm for the whole model is supported)")
    if problems:
        raise ValueError("Unsupported options in the release config: " + "; ".join(problems) + ".")
    return UPLiFTConfig(
        feature_channels=int(backbone["channel"]),
        patch_size=int(backbone["patch"]),
        encoder=encoder,
        decoder_low=decoder_low,
        decoder_high=decoder_high,
        norm=norms.pop() if norms else "batch",
        neighbourhood=None if up.get("attender", -1) == -1 else int(up["attender"]),
        noise_channels=int(dec.get("ncat_c", 0)),
        noise_scale=float(dec.get("ncat_s", 1)),
        refiner=refiner,
        raw_image_guide=bool(up.get("no_UEP", False)),
    )
