"""Shared test fixtures. Every test runs offline: the hub is switched to offline mode so that a
missed monkeypatch fails at once instead of retrying against an unreachable network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Toy models run as fast on one intra-op thread, and many times faster than on two when another
# process shares the two cores (the threads then wait on each other).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OFFICIAL = SHARED / "fixtures" / "official"


def require_shared(path: Path) -> Path:
    """Skip (with the reason) when ../shared/ is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"{path} not found: the shared fixtures live in ../shared/ beside the repository")
    return path


@pytest.fixture
def official_dir() -> Path:
    return require_shared(OFFICIAL)
