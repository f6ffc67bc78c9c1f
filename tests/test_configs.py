"""Every config in configs/ is LightningCLI YAML that parses, and shared values flow instead of being copied."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest

from tests.conftest import REPO

PROBE_CONFIGS = sorted((REPO / "tests" / "conf").glob("probe_*.yaml"))


def _instantiate(config: Path, *args: str):
    from tasks.cli import _cli_class

    return _cli_class()(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        run=False, args=["--config", str(config), *args])


@pytest.mark.parametrize("config", PROBE_CONFIGS, ids=lambda p: p.stem)
def test_a_probe_takes_its_class_count_from_the_dataset(config: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the tiny configs name their data relative to the checkout
    cli = _instantiate(config)
    assert cli.model.num_classes == type(cli.datamodule).num_classes > 0
    assert cli.model.probe.out_channels == cli.datamodule.num_classes
