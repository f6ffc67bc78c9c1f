"""Protocol parity fixtures (``../shared/fixtures/protocol/``): what the published code computed.

Each fixture file is named ``<any prefix><kind>.safetensors``; ``kind`` says which published pipeline
produced it and which module of this package checks it: ``tests/protocol/<kind>.py`` defines

    cases(fixture) -> list[str]        the independent checks in the file (e.g. one per sample or batch size)
    check(fixture, case) -> None       runs the *project's own* code path on the fixture's inputs and
                                       asserts it reproduces every stored tensor of that case

The checks must follow the protocol, not the shared files: further fixtures of the same kinds, with
other photos, label files and batch sizes, are dropped into that folder and checked the same way.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tests.conftest import SHARED

PROTOCOL = SHARED / "fixtures" / "protocol"
DATA = SHARED / "data"  # every fixture's ``inputs`` are relative to it

#: fixture kind (the file name's ending) -> what produced it
KINDS = {
    "jafar_depth_loss": "JAFAR's depth probe: SigLoss, GradientLoss, eval_metrics, the head and targets",
    "jafar_seg_transforms": "JAFAR's segmentation image and label transforms and label mappings",
    "cfm_sr_inputs": "CFM's super-resolution evaluation: inputs, low-res images, SSIM / PSNR / MSE",
    "release_train_transforms": "the UPLiFT release's training transforms and multi-scale inputs",
}


def kind_of(path: Path) -> str | None:
    """The fixture kind a file name ends with (longest match), or None for other files."""
    matches = [k for k in KINDS if path.stem.endswith(k)]
    return max(matches, key=len) if matches else None


def fixture_files() -> list[Path]:
    if not PROTOCOL.is_dir():
        return []
    return sorted(p for p in PROTOCOL.glob("*.safetensors") if kind_of(p) is not None)


@dataclass
class Fixture:
    """One fixture file: its metadata, its tensors (read on demand) and its input files."""

    path: Path
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        self.kind = kind_of(self.path)

    @cached_property
    def _file(self) -> Any:
        from safetensors import safe_open

        return safe_open(str(self.path), "pt")

    @cached_property
    def meta(self) -> dict[str, Any]:
        return json.loads(self._file.metadata()["meta"])

    def keys(self) -> list[str]:
        return list(self._file.keys())

    def __getitem__(self, key: str) -> Tensor:
        return self._file.get_tensor(key)

    def __contains__(self, key: str) -> bool:
        return key in self._file.keys()

    def input(self, relative: str) -> Path:
        """An input file named in the metadata, relative to ``../shared/data/``."""
        path = DATA / relative
        if not path.is_file():
            raise FileNotFoundError(f"{self.path.name}: input {relative} not found under {DATA}")
        return path

    @property
    def stem(self) -> str:
        return self.path.stem


def checker(kind: str) -> Any:
    """The module that checks fixtures of ``kind`` (``tests/protocol/<kind>.py``)."""
    return importlib.import_module(f"tests.protocol.{kind}")


def assert_close(ours: Tensor, expected: Tensor, rtol: float = 1e-5, atol: float = 0.0, what: str = "") -> None:
    """Relative comparison in float64, with the largest discrepancy in the message."""
    ours_d, expected_d = torch.as_tensor(ours).double(), torch.as_tensor(expected).double()
    assert ours_d.shape == expected_d.shape, f"{what}: shape {tuple(ours_d.shape)} != {tuple(expected_d.shape)}"
    torch.testing.assert_close(ours_d, expected_d, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")
