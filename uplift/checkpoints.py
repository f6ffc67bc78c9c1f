"""UPLiFT weights: one resolver for every kind of reference, and our own save format.

:func:`load_uplift` is the only way the project turns a weights reference into a model (Python, the CLI,
``uplift-upscale``, ``uplift-features``, Table 1 rows, the evaluations). A reference is one of

- a released name (``dinov2-s14``, ``dinov3-splus16``, ``sd15-vae``): downloaded from the hub;
- a :func:`save_pretrained` folder (``model.safetensors`` + ``config.json``), or its ``model.safetensors``
  alone (the config travels in the file's metadata too);
- a release-format ``.safetensors`` file, with its release YAML beside it (same stem) or given as ``config``,
  or named as the hub names it (``uplift_dinov2-s14.safetensors``, ...), which says which release it is;
- a ``.ckpt`` written by ``uplift fit`` of the UPLiFT training tasks.

A file that none of these rules identifies is one :class:`~uplift.errors.WeightsError` naming what to pass,
never a guess (the released DINOv2 and DINOv3 models have the same tensors and differ only in patch size).
Files are read with safetensors or ``torch.load(weights_only=True)``: nothing in them executes.
"""

from __future__ import annotations

import difflib
import json
import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from uplift.config import PRESETS, UPLiFTConfig, load_official_config, official_to_config, unknown_preset
from uplift.errors import CheckpointMismatchError, WeightsError
from uplift.hub import RELEASES, download

if TYPE_CHECKING:
    from uplift.model import UPLiFT

__all__ = ["CheckpointMismatchError", "WeightsError", "load_uplift", "load_state_dict_strict", "load_official",
           "read_state_dict", "read_checkpoint", "read_weights_file",
           "save_pretrained"]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: safetensors metadata of :func:`save_pretrained` files: the format tag and the config as JSON
FORMAT_TAG, CONFIG_KEY = "uplift", "uplift_config"

Reference = Union[str, Path]
ConfigLike = Union[str, Path, dict[str, Any], UPLiFTConfig, None]


# ------------------------------------------------------------------------------------------ reading files


def read_state_dict(path: Union[str, Path]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file, or one :class:`WeightsError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(path), metadata
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable .safetensors file ({type(err).__name__}: {err}); it may be "
                           f"truncated (an interrupted download) or in another format. Download it again.") from err


def read_checkpoint(path: Union[str, Path], mmap: bool = False) -> dict[str, Any]:
    """A Lightning ``.ckpt`` as a dict, loaded with ``weights_only=True``, or one :class:`WeightsError`.
    ``mmap``: map the tensors instead of reading them (a cheap check that the file loads)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}.")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if not (mmap and "mmap" in str(err)):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except pickle.UnpicklingError as err:  # objects that weights_only refuses: not run, and not to be retried
        # the unpickler's reason, never torch's first line (which suggests retrying with weights_only=False)
        refused = next((line.strip() for line in str(err).splitlines()
                        if line.strip().startswith(("Unsupported", "Trying to load"))), "refused by weights_only=True")
        raise WeightsError(f"{path} holds Python objects that a checkpoint of tensors does not ({refused}); it was "
                           f"refused and nothing in it ran. Use a checkpoint written by `uplift fit`, from a source "
                           f"you trust.") from None
    except Exception as err:  # truncated zip, another format: never executed, always named
        raise WeightsError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); it may be truncated (an interrupted "
                           f"save or copy) or not a checkpoint written by `uplift fit`.") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise WeightsError(f"{path} is not a Lightning checkpoint (no 'state_dict').")
    return checkpoint


def read_weights_file(path: Union[str, Path]) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (``.ckpt``/``.pth``/``.bin``, loaded with
    ``weights_only=True``; a Lightning ``state_dict`` is unwrapped): for third-party weights such as a VAE's."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_state_dict(path)[0]
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path} is not a readable weights file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}).") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` or raise one error listing every missing, extra or misshapen key.

    Dtypes are cast to the model's (the release stores BatchNorm's ``num_batches_tracked`` as float).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or extra or shapes:

        def listing(title: str, items: list[str]) -> str:
            shown = "\n    ".join(items[:12]) + (f"\n    ... and {len(items) - 12} more" if len(items) > 12 else "")
            return f"\n  {title} ({len(items)}):\n    {shown}" if items else ""

        raise CheckpointMismatchError(
            f"The {source} does not fit this UPLiFT configuration (is it the checkpoint of another model, "
            f"or the wrong config?)."
            + listing("missing from the checkpoint", missing)
            + listing("in the checkpoint but not in the model", extra)
            + listing("shape mismatches", shapes)
        )
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()})


# ------------------------------------------------------------------------------------------ building models


def _config(config: ConfigLike) -> UPLiFTConfig:
    """An explicit config: an :class:`UPLiFTConfig`, a preset name, a release YAML (path or dict) or our JSON."""
    if isinstance(config, UPLiFTConfig):
        return config
    if isinstance(config, str) and not Path(config).exists():
        if config in PRESETS:
            return UPLiFTConfig.preset(config)
        if Path(config).suffix.lower() not in (".yaml", ".yml", ".json") and "/" not in config and "\\" not in config:
            raise unknown_preset(config)  # a name, not a path: a misspelt preset
    if isinstance(config, (str, Path)) and Path(config).suffix == ".json":
        return UPLiFTConfig.from_dict(_read_json(Path(config)))
    if isinstance(config, dict) and "backbone" not in config and "uplift" not in config:
        return UPLiFTConfig.from_dict(config)
    return official_to_config(config)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not a valid UPLiFT config.json ({type(err).__name__}: {err}); write it with "
                           f"UPLiFT.save_pretrained or restore it from the model folder.") from err


def _build(config: UPLiFTConfig, state: dict[str, Tensor], source: str) -> "UPLiFT":
    from uplift.model import UPLiFT

    model = UPLiFT(config)
    load_state_dict_strict(model, state, source=source)
    return model.eval()


def load_official(weights: Union[str, Path, dict[str, Tensor]], config: ConfigLike) -> "UPLiFT":
    """Model from a release-format checkpoint (path or state dict) and its config (release YAML path or dict,
    preset name, or :class:`UPLiFTConfig`), in eval mode."""
    if isinstance(weights, dict):
        return _build(_config(config), weights, "state dict")
    state, _ = read_state_dict(weights)
    return _build(_config(config), state, f"checkpoint {weights}")


def _from_safetensors(path: Path, config: ConfigLike) -> "UPLiFT":
    state, metadata = read_state_dict(path)
    source = f"checkpoint {path}"
    if config is not None:
        return _build(_config(config), state, source)
    if metadata.get("format") == FORMAT_TAG and CONFIG_KEY in metadata:  # ours, self-describing
        return _build(UPLiFTConfig.from_dict(json.loads(metadata[CONFIG_KEY])), state, source)
    if (path.parent / CONFIG_NAME).is_file() and path.name == WEIGHTS_NAME:  # ours, older files
        return _build(UPLiFTConfig.from_dict(_read_json(path.parent / CONFIG_NAME)), state, source)
    for yaml_path in (path.with_suffix(".yaml"), path.with_suffix(".yml")):  # the release's pair
        if yaml_path.is_file():
            return _build(official_to_config(yaml_path), state, source)
    release = next((name for name, r in RELEASES.items() if r.weights_file == path.name), None)
    if release is not None:  # the hub's file name says which release it is
        return _build(UPLiFTConfig.preset(release), state, source)
    raise WeightsError(
        f"Cannot tell which UPLiFT model {path} holds: it has no config in its metadata, no release YAML beside it "
        f"({path.with_suffix('.yaml').name}) and is not named like a released file "
        f"({', '.join(r.weights_file for r in RELEASES.values())}). Pass its config: the release YAML, a preset name "
        f"({', '.join(PRESETS)}), e.g. UPLiFT.from_pretrained(path, config='dinov2-s14') or `--config dinov2-s14`.")


def _from_ckpt(path: Path) -> "UPLiFT":
    checkpoint = read_checkpoint(path)
    if "uplift_config" not in checkpoint:
        raise WeightsError(f"{path} is not a checkpoint of an UPLiFT training task (no 'uplift_config'); it may be a "
                           f"probe's or another task's checkpoint. Pass the .ckpt written by `uplift fit` with "
                           f"configs/dinov2_s14.yaml, configs/vae.yaml or a config of yours with the same tasks.")
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    return _build(UPLiFTConfig.from_dict(checkpoint["uplift_config"]), state, f"checkpoint {path}")


def _from_release(name: str, cache_dir: Optional[str]) -> "UPLiFT":
    release = RELEASES[name]
    way_out = (
        f"Without network access, copy {release.weights_file} from the hub repository {release.repo_id} "
        f"to this machine and load it with UPLiFT.from_pretrained('/path/to/{release.weights_file}') "
        f"(in a config or on the command line: the path instead of '{name}')."
    )
    weights = download(release.repo_id, release.weights_file, what=f"the released UPLiFT {name} weights",
                       way_out=way_out, cache_dir=cache_dir)
    try:
        config: ConfigLike = load_official_config(download(
            release.repo_id, release.config_file, what=f"the UPLiFT {name} config", way_out=way_out, cache_dir=cache_dir))
    except Exception as err:  # the config is not on the hub: the preset is the same architecture
        from huggingface_hub.errors import RemoteEntryNotFoundError

        if not isinstance(err, RemoteEntryNotFoundError):
            raise
        log.info("%s has no %s; using the built-in preset %r", release.repo_id, release.config_file, name)
        config = name
    return load_official(weights, config)


def load_uplift(reference: Reference, config: ConfigLike = None, cache_dir: Optional[str] = None) -> "UPLiFT":
    """The UPLiFT model of any weights reference (see the module docstring), in eval mode.

    Args:
        reference: a released name, a ``save_pretrained`` folder, a ``.safetensors`` file or a ``.ckpt``.
        config: the architecture of a bare release ``.safetensors`` file that cannot tell it itself: a release
            YAML (path or dict), a preset name or an :class:`UPLiFTConfig`.
        cache_dir: the hub cache for released names.
    """
    path = Path(reference).expanduser()
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file():
            return _from_safetensors(path / WEIGHTS_NAME, config)
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return _from_safetensors(found[0], config)
        raise WeightsError(f"{path} is not an UPLiFT model folder: it needs {WEIGHTS_NAME} and {CONFIG_NAME} (written "
                           f"by UPLiFT.save_pretrained) or exactly one release .safetensors (found {len(found)}).")
    if path.is_file():
        if path.suffix == ".safetensors":
            return _from_safetensors(path, config)
        if path.suffix == ".ckpt":
            return _from_ckpt(path)
        raise WeightsError(f"{path}: unsupported weights file type {path.suffix!r}; UPLiFT weights are .safetensors "
                           f"files (released or written by save_pretrained) or .ckpt files of `uplift fit`.")
    name = str(reference)
    if name in RELEASES:
        return _from_release(name, cache_dir)
    if path.suffix == ".ckpt":
        raise FileNotFoundError(f"UPLiFT checkpoint {path} not found; train one with `uplift fit` first.")
    if path.suffix == ".safetensors" or "/" in name:
        raise FileNotFoundError(f"UPLiFT weights {path} not found.")
    close = difflib.get_close_matches(name, RELEASES, n=1)
    raise WeightsError(f"{name!r} is neither a released UPLiFT model ({', '.join(RELEASES)}"
                       f"{f'; did you mean {close[0]!r}?' if close else ''}) nor an existing file or folder (a "
                       f"save_pretrained folder, a .safetensors or a .ckpt of `uplift fit`).")


# ------------------------------------------------------------------------------------------ saving


def save_pretrained(model: "UPLiFT", directory: Union[str, Path]) -> Path:
    """``model.safetensors`` (whose metadata also holds the config) and ``config.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = json.dumps(model.config.to_dict())
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": FORMAT_TAG, CONFIG_KEY: config})
    (directory / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    return directory
