"""Downloads from the Hugging Face hub, with one clear error when they cannot happen."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from uplift.errors import WeightsUnavailableError

__all__ = ["HUB_ORGANISATION", "RELEASES", "Release", "WeightsUnavailableError", "download"]

HUB_ORGANISATION = "UPLiFT-upsampler"


@dataclass(frozen=True)
class Release:
    """A released UPLiFT model: its hub repository and the backbone it was trained on."""

    repo: str
    backbone: str

    @property
    def repo_id(self) -> str:
        return f"{HUB_ORGANISATION}/{self.repo}"

    @property
    def weights_file(self) -> str:
        return f"{self.repo}.safetensors"

    @property
    def config_file(self) -> str:
        return f"{self.repo}.yaml"


RELEASES: dict[str, Release] = {
    "dinov2-s14": Release("uplift_dinov2-s14", "vit_small_patch14_dinov2.lvd142m"),
    "dinov3-splus16": Release("uplift_dinov3-splus16", "vit_small_plus_patch16_dinov3.lvd1689m"),
    "sd15-vae": Release("uplift_sd1.5vae", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
}




def hf_hub_download(*args, **kwargs) -> str:
    """Indirection over :func:`huggingface_hub.hf_hub_download` (tests monkeypatch this one call)."""
    from huggingface_hub import hf_hub_download as _download

    return _download(*args, **kwargs)


def download(repo_id: str, filename: str, *, what: str, way_out: str, subfolder: Optional[str] = None,
             cache_dir: Optional[str] = None) -> Path:
    """Download one file from the hub or raise :class:`WeightsUnavailableError` naming the way out."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, subfolder=subfolder, cache_dir=cache_dir))
    except RemoteEntryNotFoundError:
        raise
    except Exception as err:  # network, auth, missing repo: all end the same way for the user
        raise WeightsUnavailableError(
            f"Could not download {what} ({repo_id}/{filename}) from the Hugging Face hub: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n{way_out}"
        ) from err
