"""Loading and saving UPLiFT weights: the reference release's checkpoints, the hub, our own format.

Our format is a directory with ``model.safetensors`` (state dict, the release's parameter names)
and ``config.json`` (:class:`~uplift.config.UPLiFTConfig` as JSON).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from uplift.config import UPLiFTConfig, load_official_config, official_to_config
from uplift.hub import RELEASES, download

if TYPE_CHECKING:
    from uplift.model import UPLiFT

__all__ = ["CheckpointMismatchError", "load_state_dict_strict", "load_official", "load_pretrained", "save_pretrained"]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model built from the config."""


def _read_weights(weights: Union[str, Path, dict[str, Tensor]]) -> dict[str, Tensor]:
    if isinstance(weights, dict):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}.")
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


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


def load_official(weights: Union[str, Path, dict[str, Tensor]], config: Union[str, Path, dict[str, Any]]) -> "UPLiFT":
    """Model from a release-format checkpoint and its release-format config, in eval mode."""
    from uplift.config import PRESETS
    from uplift.model import UPLiFT

    if isinstance(config, str) and config in PRESETS and not Path(config).exists():
        model = UPLiFT(UPLiFTConfig.preset(config))
    else:
        model = UPLiFT(official_to_config(config))
    load_state_dict_strict(model, _read_weights(weights), source=f"checkpoint {weights if not isinstance(weights, dict) else '(state dict)'}")
    return model.eval()


def save_pretrained(model: "UPLiFT", directory: Union[str, Path]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "uplift"})
    (directory / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    return directory


def load_pretrained(name_or_dir: Union[str, Path], cache_dir: Optional[str] = None) -> "UPLiFT":
    """A released model by name, downloaded from the hub, or a :func:`save_pretrained` directory."""
    from uplift.model import UPLiFT

    path = Path(name_or_dir)
    if path.is_dir():
        if not (path / WEIGHTS_NAME).is_file() or not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{path} is not an UPLiFT model directory: it needs {WEIGHTS_NAME} and {CONFIG_NAME} "
                f"(written by UPLiFT.save_pretrained)."
            )
        model = UPLiFT(UPLiFTConfig.from_dict(json.loads((path / CONFIG_NAME).read_text())))
        load_state_dict_strict(model, load_file(path / WEIGHTS_NAME), source=f"checkpoint {path / WEIGHTS_NAME}")
        return model.eval()
    name = str(name_or_dir)
    if name not in RELEASES:
        raise ValueError(
            f"{name!r} is neither a released UPLiFT model ({', '.join(RELEASES)}) nor a directory "
            f"written by UPLiFT.save_pretrained."
        )
    release = RELEASES[name]
    way_out = (
        f"Without network access, copy {release.weights_file} from the hub repository {release.repo_id} "
        f"to this machine and load it with UPLiFT.from_official('/path/to/{release.weights_file}', '{name}') "
        f"(in a config: `weights: /path/to/{release.weights_file}`)."
    )
    weights = download(release.repo_id, release.weights_file, what=f"the released UPLiFT {name} weights",
                       way_out=way_out, cache_dir=cache_dir)
    config: Union[Path, dict[str, Any], None]
    try:
        config = download(release.repo_id, release.config_file, what=f"the UPLiFT {name} config",
                          way_out=way_out, cache_dir=cache_dir)
    except Exception as err:  # the config is not on the hub: the preset is the same architecture
        from huggingface_hub.errors import RemoteEntryNotFoundError

        if not isinstance(err, RemoteEntryNotFoundError):
            raise
        config = None
        log.info("%s has no %s; using the built-in preset %r", release.repo_id, release.config_file, name)
    if config is None:
        model = UPLiFT(UPLiFTConfig.preset(name))
        load_state_dict_strict(model, load_file(weights), source=f"checkpoint {weights}")
        return model.eval()
    return load_official(weights, load_official_config(config))
