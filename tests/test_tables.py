"""`make reproduce-table5` ... `reproduce-table8 SCALE=tiny`: each driver end to end on generated data (a reduced grid;
the command runs the full one), reruns that reuse the cache, and training runs and cells shared between tables that
are computed once (counted at `tasks.cli.run_cli`)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

import tasks.cli
import tasks.tables.table1 as table1
import tasks.tables.table5 as table5
import tasks.tables.table6 as table6
import tasks.tables.table7 as table7
import tasks.tables.table8 as table8
from tasks.tables import REPO
from tasks.tables.probes import (DINOV3, Model, Row, Runner, lift_model, standard_row, unsupported_options,
                                 uplift_model)


class Calls:
    """Every `uplift` run of the drivers, by subcommand and run folder (option parses aside)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fits: Counter[str] = Counter()
        self.tests = 0
        real = tasks.cli.run_cli

        def counting(args=None):
            args = list(args or [])
            if "--print_config" not in args:
                if args[0] == "fit":
                    folder = next(a.split("=", 1)[1] for a in args if a.startswith("--trainer.default_root_dir="))
                    self.fits[Path(folder).name] += 1
                else:
                    self.tests += 1
            return real(args)

        monkeypatch.setattr(tasks.cli, "run_cli", counting)

    def reset(self) -> None:
        self.fits.clear()
        self.tests = 0


def read(results: Path, number: int) -> tuple[str, list[dict[str, str]]]:
    with (results / "tiny" / f"table{number}.csv").open() as f:
        return (results / "tiny" / f"table{number}.md").read_text(), list(csv.DictReader(f))


def values(rows: list[dict[str, str]], method: str) -> dict[tuple[str, str, str], str]:
    return {(r["backbone"], r["dataset"], r["metric"]): r["ours"] for r in rows
            if r["method"] == method and r["dataset"] != "-"}


@pytest.mark.slow
def test_table5_reuses_table1_cells_and_shows_both_loftups(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    calls = Calls(monkeypatch)
    tiny = ["--scale", "tiny", "--results", str(tmp_path), "--datasets", "voc"]
    assert table1.main([*tiny, "--rows", "uplift"]) == 0
    assert len(calls.fits) == 2 and set(calls.fits.values()) == {1}  # the tiny UPLiFT, then its VOC probe
    calls.reset()

    assert table5.main(tiny) == 0
    out = capsys.readouterr().out
    assert "numbers below are MEANINGLESS" in out
    assert not calls.fits and calls.tests == 0  # UPLiFT's cell is Table 1's; LoftUp cannot be had offline
    md, rows = read(tmp_path, 5)
    for label in table5.ROWS.values():
        assert f"| {label} |" in md
    assert "(84.63)" in md and "(84.52)" in md and "(85.21)" in md and "(223.5)" in md  # the paper's Table 5
    _, rows1 = read(tmp_path, 1)
    assert values(rows, "UPLiFT") == values(rows1, "UPLiFT") and values(rows, "UPLiFT")[("dinov2", "voc", "mIoU")] != ""
    loftup = [r for r in rows if r["method"].startswith("LoftUp") and r["dataset"] == "voc"]
    assert len(loftup) == 4 and all(r["status"] == "unavailable" and "torch.hub.load" in r["reason"] for r in loftup)


@pytest.mark.slow
def test_tables_6_and_7_train_their_shared_model_once_and_rerun_from_the_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    calls = Calls(monkeypatch)
    tiny = ["--scale", "tiny", "--results", str(tmp_path), "--datasets", "voc"]
    assert table6.main([*tiny, "--depths", "4", "1,2,3"]) == 0
    assert "numbers below are MEANINGLESS" in capsys.readouterr().out
    models = {name for name in calls.fits if not name.startswith("uplift-dinov2__")}
    assert len(models) == 2 and all(calls.fits[m] == 1 for m in models)  # one UPLiFT per depth set
    assert sum(calls.fits.values()) == 4  # and one probe each
    md6, rows6 = read(tmp_path, 6)
    assert "| d = 4 |" in md6 and "| d ∈ {1, 2, 3} |" in md6 and "(81.42)" in md6 and "(85.21)" in md6
    assert all(r["status"] == "done" for r in rows6), rows6
    trained = [json.loads(p.read_text())["args"] for p in (tmp_path / "tiny" / "models").glob("*/finished.json")]
    assert sorted(a for args in trained for a in args if a.startswith("--model.init_args.depths=")) == [
        "--model.init_args.depths=[1,2,3]", "--model.init_args.depths=[4]"]
    assert all("--data.init_args.image_size=224" in args for args in trained)  # depth 4 halves 224 into whole patches
    fitted_by_6 = set(calls.fits)
    calls.reset()

    assert table7.main([*tiny, "--neighbourhoods", "no-la", "5", "17"]) == 0
    md7, rows7 = read(tmp_path, 7)
    # n = 17 is Table 6's d = {1, 2, 3}: neither trained nor probed again
    assert not fitted_by_6 & set(calls.fits), calls.fits
    assert values(rows7, "n = 17") == values(rows6, "d ∈ {1, 2, 3}")
    assert all(count == 1 for count in calls.fits.values())
    no_la = [r for r in rows7 if r["method"] == "No LA"]
    # "No LA" (`uplift.neighbourhood: null`) trains and probes like any other row
    assert no_la and all(r["status"] == "done" for r in no_la), no_la
    assert len(calls.fits) == 4  # n = 5 and No LA: a model and a probe each
    assert all(r["status"] == "done" for r in rows7 if r["method"] != "No LA")
    assert "| No LA |" in md7 and "| n = 5 |" in md7 and "(84.80¹)" in md7 and "84.80 as n = 5's VOC Acc" in md7
    calls.reset()

    assert table6.main([*tiny, "--depths", "4", "1,2,3"]) == 0  # a rerun recomputes nothing
    assert table7.main([*tiny, "--neighbourhoods", "no-la", "5", "17"]) == 0
    assert not calls.fits and calls.tests == 0
    assert read(tmp_path, 7)[1] == rows7


def test_a_model_option_the_code_lacks_makes_the_row_unavailable_without_training(tmp_path: Path, monkeypatch) -> None:
    config = Path(table1.__file__).parents[2] / "tests" / "conf" / "predictive.yaml"
    assert unsupported_options(config, ["--model.init_args.uplift.neighbourhood=9"]) is None
    reason = unsupported_options(config, ["--model.init_args.uplift.no_such_option=1"])
    assert reason is not None and "no_such_option" in reason
    calls = Calls(monkeypatch)
    model = Model("uplift-dinov2", "tests/conf/predictive.yaml", ("--model.init_args.uplift.no_such_option=1",))
    result = Runner("tiny", tmp_path).cell(Row("uplift.upsamplers.UPLiFTUpsampler", model=model), "voc")
    assert result["status"] == "unavailable" and "no_such_option" in result["reason"]
    assert not calls.fits and calls.tests == 0


@pytest.mark.slow
def test_table8_probes_both_backbones_and_reruns_from_the_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    calls = Calls(monkeypatch)
    tiny = ["--scale", "tiny", "--results", str(tmp_path), "--datasets", "voc"]
    assert table8.main(tiny) == 0
    assert "numbers below are MEANINGLESS" in capsys.readouterr().out
    assert len(calls.fits) == 4 and set(calls.fits.values()) == {1}  # a tiny UPLiFT per backbone and its probe
    md, rows = read(tmp_path, 8)
    assert "DINOv3-S+/16 VOC mIoU" in md and "(84.72)" in md and "(83.05)" in md and "(84.00†)" in md
    assert "| AnyUp | - (0.90) | - (84.00†) | - (96.19†) | - (-) | - (-) |" in md  # AnyUp reported no DINOv3 VOC
    uplift = values(rows, "UPLiFT")
    assert uplift[("dinov2", "voc", "mIoU")] != "" and uplift[("dinov3", "voc", "mIoU")] != ""
    for method, way_out in (("JAFAR", "`repo: /path/to/JAFAR`"), ("AnyUp", "torch.hub.load")):
        cells = [r for r in rows if r["method"] == method and r["dataset"] == "voc"]
        assert {r["backbone"] for r in cells} == {"dinov2", "dinov3"}
        assert all(r["status"] == "unavailable" and way_out in r["reason"] for r in cells), method
    probes = {p.name: json.loads((p / "finished.json").read_text())["args"]
              for p in (tmp_path / "tiny" / "probes").iterdir() if p.is_dir() and (p / "finished.json").is_file()}
    on_dinov3 = [name for name, args in probes.items()
                 if "--model.init_args.backbone.name=vit_small_plus_patch16_dinov3.lvd1689m" in args]
    assert len(probes) == 2 and len(on_dinov3) == 1 and "dinov3" in on_dinov3[0]
    calls.reset()

    assert table8.main(tiny) == 0
    assert not calls.fits and calls.tests == 0
    assert read(tmp_path, 8)[1] == rows


FULL_MODELS = {"uplift-dinov2": uplift_model("full", train_args=["--data.init_args.root=/data/imagenet/train"]),
               "uplift-d4-n5": uplift_model("full", depths=(4,), neighbourhood=5),
               "uplift-dinov3": uplift_model("full", DINOV3), "lift": lift_model("full")}


@pytest.mark.parametrize("name", list(FULL_MODELS))
def test_full_scale_training_runs_take_the_run_folder_overrides(name: str, tmp_path: Path) -> None:
    """What fit_once adds (the run folder, which the checkpoints follow) parses with every paper config the drivers
    train; parsing only, nothing is built."""
    model = FULL_MODELS[name]
    run = [f"--trainer.default_root_dir={tmp_path}"]
    assert unsupported_options(REPO / model.config, [*model.args, *run]) is None


def test_full_scale_dinov3_probes_parse(tmp_path: Path) -> None:
    runner = Runner("full", tmp_path)
    for method in ("uplift", "jafar", "anyup"):
        row = standard_row(method, "full", {})
        row.backbone = DINOV3
        config, args = runner.probe_args(row, "voc")
        assert "--model.init_args.backbone.name=vit_small_plus_patch16_dinov3.lvd1689m" in args
        assert unsupported_options(config, [*args, f"--trainer.default_root_dir={tmp_path}"]) is None, method
