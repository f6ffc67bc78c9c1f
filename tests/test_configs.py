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


CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "tests" / "conf").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_parses(config: Path, capsys, monkeypatch) -> None:
    """``uplift <subcommand> --config X --print_config`` resolves every config of the repository (the generative
    evaluations are ``test`` configs, the rest train)."""
    import yaml

    from tasks.cli import main

    monkeypatch.chdir(REPO)
    subcommand = "test" if config.stem.startswith(("sr_", "t2i_")) else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err[-2000:]
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"] and resolved["data"]["class_path"]
