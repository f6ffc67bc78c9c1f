"""The fault suite: every bad input and fault of issue 10, each with the exact error or the behaviour expected.

``FAULTS`` is the maintained table: one row per fault (id, the issue's words, how to trigger it, what must
happen) and either the check that runs it here or the test that covers it elsewhere. A new fault gets a row;
``test_the_table_covers_every_item_of_the_issue`` keeps the table honest (every issue item has a row, every row
is run or names a test that exists). Rows owned by another helper whose code has not landed on this branch are
``xfail(strict=True)``: they start failing loudly (XPASS) the day the fix lands, and the mark is then removed.

Interruptions are real: ``uplift fit`` subprocesses receive SIGINT / SIGTERM from this process mid-epoch
(``test_signals_mid_epoch_save_and_resume_exactly``, ``test_a_second_sigint_stops_at_once``, and one DDP rank in
``test_sigterm_to_one_ddp_rank_stops_every_rank_after_the_same_batch``), and in-process
runs send themselves a real signal (``tests.helpers.SignalAt``). Everything runs on the tiny configs in
``tests/conf`` (``faults.yaml``) and the generated data in ``tests/data``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import lightning  # noqa: F401  (imported here, its log handler writes to the session's stderr, not one test's capsys)
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import REPO

FAULTS_CONF = REPO / "tests" / "conf" / "faults.yaml"
PREDICTIVE = REPO / "tests" / "conf" / "predictive.yaml"
IMAGENET = REPO / "tests" / "data" / "imagenet"
VOC = REPO / "tests" / "data" / "voc"
MAX_STEPS = 10  # faults.yaml: 4 steps an epoch, so a run crosses two epoch boundaries


# ------------------------------------------------------------------------------------------ helpers


def _config(folder: Path, *, delay: float = 0.0, hold_at: Optional[int] = None, before: tuple[dict, ...] = (),
            checkpoint: Optional[dict] = None, **trainer) -> Path:
    """A copy of faults.yaml in ``folder`` with absolute data paths, LossLog's ``delay`` and ``hold_at``, extra
    callbacks ``before`` the checkpoint callback (which stays last), its ``checkpoint`` options and ``trainer``
    options."""
    config = yaml.safe_load(FAULTS_CONF.read_text())
    config["data"]["init_args"].update(root=str(IMAGENET / "train"), val_root=str(IMAGENET / "val"))
    callbacks = config["trainer"]["callbacks"]
    callbacks[0]["init_args"].update(delay=delay, hold_at=hold_at)
    callbacks[-1]["init_args"].update(checkpoint or {})
    config["trainer"]["callbacks"] = [*callbacks[:-1], *before, callbacks[-1]]
    config["trainer"].update(trainer)
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _losses(folder: Path) -> list[tuple[int, float]]:
    """``(step, loss)`` of every logged step, in order."""
    path = folder / "losses.jsonl"
    if not path.exists():
        return []
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


def _uplift(capsys, *args: str) -> tuple[int, str]:
    """``uplift *args`` in this process: (exit status, stderr)."""
    from tasks.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


def _one_error(err: str) -> str:
    """The ``uplift: error:`` line of ``err``; fails unless it is exactly one line and there is no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("uplift: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    following = err[err.index(lines[0]) + len(lines[0]):].strip()
    assert not following, f"more than one line of error: {err[-2000:]}"
    return lines[0]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def _write_broken(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")


# ------------------------------------------------------------------------------------------ the checks


def check_all_unreadable_folder(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.png", "d.jpg"):
        _write_broken(folder / name)
    code, err = _uplift(capsys, "fit", "--config", _config(tmp_path), "--data.init_args.root", folder)
    line = _one_error(err)
    assert code == 2
    assert re.fullmatch(rf"uplift: error: None of the 4 images of data\.root={re.escape(str(folder))} can be used "
                        r"\(a\.jpg: unreadable \(.+\); b\.jpg: unreadable \(.+\); c\.png: unreadable \(.+\); "
                        r"\.\.\.\)\. "
                        r"Check the files \(corrupt, truncated or not images\?\) or point the option at another "
                        r"folder\.", line), line
    assert _losses(tmp_path) == []  # refused before the first batch


def _voc_copy(tmp_path: Path) -> Path:
    root = tmp_path / "voc"
    shutil.copytree(VOC, root)
    return root


def check_segmentation_label_outside_the_classes(tmp_path: Path) -> None:
    from datamodules import ADE20KDataModule, VOCDataModule
    from uplift.errors import InputError

    root = _voc_copy(tmp_path)
    voc = root / "VOCdevkit" / "VOC2012"
    name = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    label_path = voc / "SegmentationClass" / f"{name}.png"
    label = Image.open(label_path)
    values = np.array(label)
    assert 255 in values  # the void border: a VOC value, never an error
    next(iter(_val_loader(VOCDataModule, root)))
    values[:2, :2], values[-2:, -2:] = 30, 77  # not VOC classes (0-20), not its void value
    edited = Image.fromarray(values, mode="P")
    edited.putpalette(label.getpalette())
    edited.save(label_path)
    with pytest.raises(InputError) as error:
        next(iter(_val_loader(VOCDataModule, root)))
    assert str(error.value) == (
        f"Label file {label_path} holds label value(s) 30, 77 that are neither VOC label ids (0-20) nor its void "
        f"value 255. Use the dataset's original label files (not converted, colourised or resized copies), with the "
        f"datamodule of that dataset.")
    # ADE20K: 0-150 are all classes (0 = "other"), and it has no void value: 151 and 255 are errors
    ade = tmp_path / "ade"
    shutil.copytree(REPO / "tests" / "data" / "ade20k", ade)
    annotation = sorted((ade / "ADEChallengeData2016" / "annotations" / "validation").glob("*.png"))[0]
    values = np.array(Image.open(annotation))
    values[0, 0] = 255
    Image.fromarray(values).save(annotation)
    with pytest.raises(InputError, match=rf"Label file {re.escape(str(annotation))} holds label value\(s\) 255 that "
                                         r"are neither ADE20K label ids \(0-150\)\. Use"):
        list(_val_loader(ADE20KDataModule, ade))


def _val_loader(datamodule_class, root: Path):
    dm = datamodule_class(root=str(root), image_size=28, num_workers=0)
    dm.setup("validate")
    return dm.val_dataloader()


def check_datamodule_options_name_themselves(tmp_path: Path, capsys) -> None:
    from datamodules import ImageDataModule, VOCDataModule
    from datamodules.depth import COCODepthDataModule
    from uplift.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^data\.batch_size must be a positive integer, got 0\.$"):
        ImageDataModule(batch_size=0)
    with pytest.raises(ConfigError, match=r"^data\.val_fraction must be a fraction in \[0, 1\) of the training images "
                                          r"to hold out for validation \(used when data\.val_root is not set\), got "
                                          r"2\.0\.$"):
        ImageDataModule(val_fraction=2.0)
    with pytest.raises(ConfigError, match=r"^data\.batch_size must be a positive integer, got 0\.$"):
        VOCDataModule(root=str(VOC), batch_size=0)
    with pytest.raises(ConfigError, match=r"^data\.val_batch_size must be a positive integer, got -1\.$"):
        COCODepthDataModule(root=str(tmp_path), val_batch_size=-1)
    missing = tmp_path / "no-such-folder"
    dm = ImageDataModule(root=str(IMAGENET / "train"), val_root=str(missing), num_workers=0)
    with pytest.raises(FileNotFoundError) as error:
        dm.setup("fit")
    assert str(error.value) == (f"data.val_root: {missing} does not exist. Point `data.val_root` at a folder of "
                                f"held-out images, or leave it unset to hold out `data.val_fraction` of the training "
                                f"images.")
    # and from the command line: one line
    code, err = _uplift(capsys, "fit", "--config", PREDICTIVE, "--data.init_args.batch_size", "0")
    assert code == 2 and _one_error(err) == "uplift: error: data.batch_size must be a positive integer, got 0."


def check_yaml_typos(tmp_path: Path, capsys) -> None:
    text = PREDICTIVE.read_text().replace("max_steps:", "max_stepz:").replace("depths:", "depht:")
    text = text.replace("    batch_size: 2", "    batchsize: 2")
    text = text.replace("      pretrained: false", "      pretraind: false")
    config = tmp_path / "typos.yaml"
    config.write_text(text)
    code, err = _uplift(capsys, "fit", "--config", config)
    assert code == 2 and "usage:" not in err
    assert _one_error(err) == (
        f"uplift: error: {config}: unknown keys trainer.max_stepz (did you mean trainer.max_steps?), "
        f"model.init_args.backbone.pretraind (did you mean model.init_args.backbone.pretrained?), "
        f"model.init_args.depht (did you mean model.init_args.depths?), data.init_args.batchsize (did you mean "
        f"data.init_args.batch_size?). Fix the spelling; `uplift fit --help` lists the options.")
    code, err = _uplift(capsys, "fit", "--config", PREDICTIVE, "--data.init_args.batch_size", "abc")  # a bad value
    assert code == 2 and "usage:" not in err and _one_error(err) == (
        "uplift: error: Parser key \"data\": Problem with given class_path 'datamodules.ImageDataModule': Parser key "
        "\"batch_size\": Expected a <class 'int'>. Got value: abc. `uplift fit --help` lists the options.")


def check_unknown_preset(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from tests.helpers import tiny_config
    from uplift import UPLiFT, UPLiFTConfig
    from uplift.checkpoints import load_uplift
    from uplift.errors import ConfigError

    expected = ("Unknown UPLiFT preset 'dinov2-s15' (did you mean 'dinov2-s14'?); the presets are dinov2-s14, "
                "dinov3-splus16, sd15-vae. A config can also be a release YAML file or a config.json.")
    weights = tmp_path / "weights.safetensors"
    save_file(UPLiFT(tiny_config()).state_dict(), weights)
    for call in (lambda: UPLiFT.from_official(weights, "dinov2-s15"), lambda: UPLiFTConfig.preset("dinov2-s15"),
                 lambda: load_uplift(weights, config="dinov2-s15")):
        with pytest.raises(ConfigError) as error:
            call()
        assert str(error.value) == expected


def check_invalid_config_json(tmp_path: Path) -> None:
    from tests.helpers import tiny_config
    from uplift import UPLiFT
    from uplift.checkpoints import load_uplift
    from uplift.errors import WeightsError

    folder = UPLiFT(tiny_config()).save_pretrained(tmp_path / "model")
    (folder / "config.json").write_text('{"feature_channels": 8,')
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(folder / 'config.json'))} is not a valid UPLiFT "
                                           r"config\.json \(JSONDecodeError: .*\); write it with"):
        load_uplift(folder / "model.safetensors", config=str(folder / "config.json"))


def _trained(tmp_path: Path, capsys) -> Path:
    """A finished tiny fit (2 steps) of faults.yaml in ``tmp_path/trained``; its last.ckpt."""
    folder = tmp_path / "trained"
    folder.mkdir()
    os.chdir(folder)
    try:
        code, err = _uplift(capsys, "fit", "--config", _config(folder), "--trainer.max_steps", "2")
    finally:
        os.chdir(tmp_path)
    assert code == 0, err[-3000:]
    return folder / "run" / "checkpoints" / "last.ckpt"


def check_bad_ckpt_path(tmp_path: Path, capsys) -> None:
    trained = _trained(tmp_path, capsys)
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(trained.read_bytes()[:2000])
    code, err = _uplift(capsys, "validate", "--config", _config(tmp_path), "--ckpt_path", truncated)
    assert code == 2 and re.fullmatch(
        rf"uplift: error: {re.escape(str(truncated))} is not a readable checkpoint \(RuntimeError: PytorchStreamReader "
        r"failed reading zip archive: .*\); it may be truncated \(an interrupted save or copy\) or not a checkpoint "
        r"written by `uplift fit`\.", _one_error(err))
    code, err = _uplift(capsys, "validate", "--config", _config(tmp_path), "--ckpt_path", trained,
                        "--model.init_args.uplift.decoder_high.widths", "[16]")  # another width
    assert code == 2 and re.fullmatch(
        rf"uplift: error: {re.escape(str(trained))} was trained with .*decoder_high.*: run it with the config it was "
        r"trained with \(its run folder keeps the resolved config\.yaml\)\.", _one_error(err))
    probe = tmp_path / "probe.ckpt"
    torch.save({"state_dict": {"probe.weight": torch.zeros(2, 3)}, "pytorch-lightning_version": "2.6.0"}, probe)
    code, err = _uplift(capsys, "validate", "--config", _config(tmp_path), "--ckpt_path", probe)  # another task's
    assert code == 2 and re.fullmatch(rf"uplift: error: {re.escape(str(probe))} is a checkpoint of SegmentationProbeTask.*"
                                      r"or pass a checkpoint of PredictiveTask\.", _one_error(err))


class _Exploit:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def check_ckpt_url_pickle_never_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    served, marker = tmp_path / "served", tmp_path / "PWNED"
    served.mkdir()
    torch.save({"state_dict": {}, "x": _Exploit(marker)}, served / "evil.ckpt")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt"
    try:
        code, err = _uplift(capsys, "validate", "--config", PREDICTIVE, "--ckpt_path", url)
    finally:
        server.shutdown()
        server.server_close()
    assert not marker.exists(), "the pickle ran"
    assert code == 2
    assert re.fullmatch(rf"uplift: error: --ckpt_path {re.escape(url)}: .*evil\.ckpt holds Python objects that a "
                        r"checkpoint of tensors does not \(Trying to load unsupported GLOBAL posix\.system whose "
                        r"module posix is blocked\.\); it was refused and nothing in it ran\. Use a checkpoint written by "
                        r"`uplift fit`, from a source you trust\.", _one_error(err)), err


def check_makefile_variables_are_data(tmp_path: Path) -> None:
    """A stand-in for .venv/bin/python records the program's arguments (and lets Make's `python -c` run)."""
    record, marker = tmp_path / "argv.txt", tmp_path / "PWNED"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\n'
                    f'for a in "$@"; do printf "%s\\n" "$a"; done > {record}\n')
    fake.chmod(0o755)
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than pyproject.toml: `install` has nothing to do
    attack = f"touch {marker}"
    args = f'--rows "uplift; {attack}" $({attack}) `{attack}` *'
    result = subprocess.run(["make", "-s", "-C", str(REPO), "reproduce-table1", f"PY={fake}", f"STAMP={stamp}",
                             f"ARGS={args}", f"SCALE=tiny; {attack}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "a command in ARGS or SCALE ran"
    assert record.read_text().splitlines() == [
        "-m", "tasks.tables.table1", "--scale", f"tiny; {attack}", "--rows", f"uplift; {attack}",
        f"$({attack.split()[0]}", f"{attack.split()[1]})", f"`{attack.split()[0]}", f"{attack.split()[1]}`", "*"]


def check_probe_test_takes_ckpt_path(tmp_path: Path, capsys) -> None:
    config = REPO / "tests" / "conf" / "probe_voc.yaml"
    data = ["--data.init_args.root", VOC]
    checkpoints = tmp_path / "probe" / "checkpoints"
    code, err = _uplift(capsys, "fit", "--config", config, *data, "--trainer.callbacks.dirpath", checkpoints,
                        "--trainer.default_root_dir", tmp_path / "probe")
    assert code == 0, err[-3000:]
    from tasks.cli import run_cli

    # the config's probe_checkpoint (runs/tiny_probe_voc/..., relative to this empty folder) does not exist
    given = run_cli(["test", "--config", str(config), *map(str, data), "--ckpt_path", str(checkpoints / "last.ckpt")])
    named = run_cli(["test", "--config", str(config), *map(str, data),
                     f"--model.init_args.probe_checkpoint={checkpoints / 'last.ckpt'}"])
    scores = [{k: float(v) for k, v in cli.trainer.callback_metrics.items()} for cli in (given, named)]
    assert scores[0] == scores[1] and "test/mIoU" in scores[0]


def check_second_fit_never_overwrites_a_run(tmp_path: Path, capsys) -> None:
    last = _trained(tmp_path, capsys)
    os.chdir(last.parents[2])
    before = last.read_bytes()
    code, err = _uplift(capsys, "fit", "--config", "faults.yaml")
    assert code == 2 and _one_error(err) == (
        f"uplift: error: {last.parents[1]} already holds a run (finished.json, checkpoints/epoch=0-step=2.ckpt, "
        f"checkpoints/last.ckpt); a new "
        f"fit would overwrite it. Resume it with `--ckpt_path {last}`, or start a new run in its own folder: "
        f"`--trainer.default_root_dir <new folder>`.")
    assert last.read_bytes() == before


def check_users_config_yaml_is_kept(tmp_path: Path, capsys) -> None:
    users = tmp_path / "config.yaml"  # the user's own file, in the working directory, named as Lightning's
    shutil.copy(_config(tmp_path), users)
    mine = users.read_text()
    code, err = _uplift(capsys, "fit", "--config", "config.yaml", "--trainer.max_steps", "1",
                        "--trainer.default_root_dir", tmp_path)  # logger off: the resolved config lands here
    assert code == 0, err[-3000:]
    assert users.read_text() == mine
    assert (tmp_path / "uplift_config.yaml").read_text().startswith("# uplift: the resolved config of the run")


def check_unwritable_outputs(tmp_path: Path, capsys) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a folder inside a file cannot be made, whoever runs the tests (root included)
    target = blocked / "out"
    base = ["--config", _config(tmp_path)]
    cases = {
        "checkpoints (--trainer.callbacks.dirpath)": ["fit", *base, "--trainer.callbacks.dirpath", target],
        "logs (--trainer.logger.init_args.save_dir)": [
            "fit", *base, "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir", target],
        "predictions (FeatureWriter output_dir)": ["predict", *base, "--model.init_args.predict_dir", target],
    }
    for what, args in cases.items():
        code, err = _uplift(capsys, *args)
        assert code == 2 and _one_error(err) == (f"uplift: error: Cannot write {what} to {target} (NotADirectoryError: "
                                                 f"Not a directory); choose a writable folder."), err
    assert _losses(tmp_path) == []  # found before any work


def check_divergence_stops_before_the_step(tmp_path: Path, capsys) -> None:
    nan = {"class_path": "tests.helpers.NaNAt", "init_args": {"step": 3}}
    config = _config(tmp_path, before=(nan,))
    code, err = _uplift(capsys, "fit", "--config", config, "--trainer.callbacks.every_n_train_steps", "2")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert code == 2 and _one_error(err) == (
        f"uplift: error: The training loss became nan at step 3: the run diverged and was stopped before the weights "
        f"were updated. The last good checkpoint is {checkpoints / 'last.ckpt'}. Lower the learning rate "
        f"(model.init_args.lr), use precision 32-true instead of 16-mixed, or check the data for broken images.")
    assert [step for step, _ in _losses(tmp_path)] == [1, 2, 3]  # the 4th batch (at global step 3) never finished
    for path in checkpoints.glob("*.ckpt"):  # every checkpoint is of a finite model
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
    assert not (tmp_path / "run" / "finished.json").exists()


def check_table_cells_resume_and_key_on_their_arguments(tmp_path: Path) -> None:
    from tasks.cli import read_finished
    from tasks.tables import ResultsCache, args_key, fit_once
    from tasks.callbacks import RunInterrupted

    run_dir = tmp_path / "cell"
    stop = {"class_path": "tests.helpers.SignalAt", "init_args": {"step": 3}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    interrupted, plain = _config(tmp_path / "a", before=(stop,)), _config(tmp_path / "b")
    with pytest.raises(RunInterrupted, match="interrupted by SIGINT at step 3"):
        fit_once(interrupted, [], run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and read_finished(run_dir) is None
    assert fit_once(plain, [], run_dir) == run_dir / "checkpoints" / "last.ckpt"  # resumed, not counted as done
    steps = [s for s, _ in _losses(tmp_path)]
    assert steps == list(range(1, MAX_STEPS + 1)), steps  # 1-3 interrupted, 4-10 resumed: no step twice or missing
    assert read_finished(run_dir)["global_step"] == MAX_STEPS
    fit_once(plain, [], run_dir)  # finished with these arguments: reused
    assert len(_losses(tmp_path)) == MAX_STEPS
    with pytest.raises(RuntimeError, match="holds a finished fit of other arguments"):
        fit_once(plain, ["--trainer.max_steps=11"], run_dir)
    cache = ResultsCache(tmp_path / "results")
    cache.put("cell", args_key(["--a", "1"]), {"status": "done", "value": 1.0})
    assert cache.get("cell", args_key(["--a", "1"])) is not None
    assert cache.get("cell", args_key(["--a", "2"])) is None  # other arguments: computed again
    assert cache.get("cell", args_key(["--a", "1", "--ckpt_path=x"])) is not None  # resuming changes nothing


def check_model_input_dtypes() -> None:
    from tests.helpers import tiny_config
    from uplift import UPLiFT

    model = UPLiFT(tiny_config(14, 8)).eval()
    image, features = torch.rand(1, 3, 56, 56), torch.rand(1, 8, 4, 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.uint8):
        with pytest.raises(ValueError, match="dtype"):
            model((image * 255 if dtype == torch.uint8 else image).to(dtype), features)


def check_huge_steps_are_refused_up_front() -> None:
    """In a child process whose memory is capped (5 GB of address space, ~1.5 GB beyond what importing torch maps):
    today's code allocates until the allocator fails."""
    code = ("import time, torch\nfrom tests.helpers import tiny_config\nfrom uplift import UPLiFT\n"
            "m = UPLiFT(tiny_config(14, 8)).eval()\nt = time.monotonic()\n"
            "try:\n    m(torch.rand(1, 3, 56, 56), torch.rand(1, 8, 4, 4), steps=30)\n"
            "except ValueError as e:\n    print('refused', round(time.monotonic() - t, 2), e)\n")
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (5 << 30, 5 << 30))

    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(),
                                preexec_fn=cap, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise AssertionError("steps=30 was not refused up front") from None
    assert result.returncode == 0 and result.stdout.startswith("refused"), result.stderr[-1500:]
    assert float(result.stdout.split()[1]) < 1 and "steps" in result.stdout


def check_output_size_int() -> None:
    from tests.helpers import tiny_config
    from uplift import UPLiFT

    model = UPLiFT(tiny_config(14, 8)).eval()
    with pytest.raises(ValueError, match="output_size"):
        model(torch.rand(1, 3, 56, 56), torch.rand(1, 8, 4, 4), output_size=56)


def _predict(tmp_path: Path, capsys, images: dict[str, tuple[int, int]], *args: str) -> tuple[int, str, Path]:
    """``uplift predict`` of plain images of the given sizes in a new folder: (exit status, stderr, output folder)."""
    run = len(list(tmp_path.glob("images*")))
    folder, out = tmp_path / f"images{run}", tmp_path / f"out{run}"
    folder.mkdir()
    for name, size in images.items():
        Image.new("RGB", size, (200, 30, 30)).save(folder / name)
    code, err = _uplift(capsys, "predict", "--config", PREDICTIVE, "--data.init_args.predict_root", folder,
                        "--data.init_args.predict_size", "56", "--model.init_args.predict_dir", out, *args)
    return code, err, out


def check_predict_name_collision(tmp_path: Path, capsys) -> None:
    code, err, apart = _predict(tmp_path, capsys, {"a.jpg": (56, 56), "b.png": (56, 56)})
    assert code == 0, err[-2000:]
    code, err, together = _predict(tmp_path, capsys, {"a.jpg": (56, 56), "a.png": (56, 56)})
    assert code == 0, err[-2000:]
    written = [sorted(p.relative_to(o) for p in o.rglob("*") if p.is_file()) for o in (apart, together)]
    assert len(written[1]) == len(written[0]) > 0, written  # every input keeps its own results


def check_predict_image_smaller_than_a_patch(tmp_path: Path, capsys) -> None:
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("tasks.predictive").addHandler(handler)
    try:
        code, err, out = _predict(tmp_path, capsys, {"a_ok.png": (56, 56), "tiny.png": (8, 8)},
                                  "--data.init_args.predict_size", "null")
    finally:
        logging.getLogger("tasks.predictive").removeHandler(handler)
    assert code == 0, err[-2000:]
    assert any("Skipping tiny.png" in r and "smaller than one 14x14 patch" in r for r in records), records
    assert "Traceback" not in err and any(out.rglob("a_ok*")), list(out.rglob("*"))  # the others are written


def check_predict_strip_is_bounded(tmp_path: Path, capsys) -> None:
    """The issue's case: a 10000 x 100 strip with its short side resized to 448 (44800 x 448, 20 M pixels): the
    features are computed at about 1 M pixels (max_pixels, aspect kept), not at 20 M."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, err, out = _predict(tmp_path, capsys, {"strip.png": (10000, 100)}, "--data.init_args.predict_size", "448")
    assert code == 0, err[-2000:]
    from safetensors import safe_open

    with safe_open(str(out / "strip.safetensors"), "pt") as f:
        height, width = f.get_slice("features").get_shape()[-2:]
    assert height * width <= 1024 * 1024 and abs(width / height - 100) < 2, (height, width)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 6000, f"peak memory grew by {grown_mib:.0f} MiB"


# ------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Fault:
    id: str
    item: str  # the issue's words
    trigger: str
    expected: str  # the exact error, or the behaviour
    check: Optional[Callable[..., None]] = None  # runs it here, or
    covered_by: str = ""  # the test that covers it: "test_name" (this file) or "tests/test_x.py::test_name"
    owner: str = ""  # another helper's item whose fix has not landed here: xfail(strict=True)


FAULTS = [
    # ---------------------------------------------------------------- work lost or silently wrong
    Fault("sigterm-saves", "SIGTERM (what a cluster sends before preemption) ends `uplift fit` with exit 0",
          "SIGTERM to an `uplift fit` subprocess while its 6th step is in flight (mid-epoch)",
          "exit 143; 'uplift: interrupted by SIGTERM at step k: its state at step k is saved in <last.ckpt>; resume "
          "with ... `--ckpt_path <last.ckpt>`'; the resumed run's losses continue the uninterrupted run's exactly",
          covered_by="test_signals_mid_epoch_save_and_resume_exactly"),
    Fault("sigint-resume-exact", "Resuming after Ctrl-C is not exact",
          "SIGINT to an `uplift fit` subprocess while its 4th step (the last of epoch 0) is in flight, then the same "
          "command with --ckpt_path last.ckpt",
          "exit 130 with the resume command; interrupted + resumed per-step losses == uninterrupted losses, bit "
          "for bit",
          covered_by="test_signals_mid_epoch_save_and_resume_exactly"),
    Fault("second-sigint", "only Ctrl-C saves", "two SIGINTs 0.5 s apart while a step is in flight (60 s long)",
          "exit 130 at once (long before the step would end): 'stopped at once by a second SIGINT at step 1, without "
          "saving the batch in flight; resume from the last checkpoint written before, <last.ckpt>: ...'",
          covered_by="test_a_second_sigint_stops_at_once"),
    Fault("table-cells", "a cell whose fit was interrupted ... counts as finished; cached cells are reused when "
          "other arguments were given", "fit_once interrupted by a real SIGINT at step 3, then again; ResultsCache "
          "with other arguments", "resumed (steps 4-10, none twice), finished.json written, then reused; other "
          "arguments: an error / recomputed", check=check_table_cells_resume_and_key_on_their_arguments),
    Fault("refit-overwrites", "A second `uplift fit` into the same run folder overwrites the first run's `last.ckpt`",
          "`uplift fit` again into a folder holding a finished run",
          "exit 2: '<dir> already holds a run (epoch=0-step=2.ckpt, last.ckpt); a new fit would overwrite it. Resume "
          "it with `--ckpt_path ...`, or start a new run in its own folder: ...'; last.ckpt unchanged",
          check=check_second_fit_never_overwrites_a_run),
    Fault("users-config-yaml", "rewrites the user's own `./config.yaml` when the logger is off",
          "`uplift fit --config config.yaml` with logger: false in the config's folder",
          "config.yaml byte-identical; the resolved config goes to uplift_config.yaml",
          check=check_users_config_yaml_is_kept),
    Fault("unwritable-outputs", "An unwritable checkpoint folder is found at the first save ... an unwritable log or "
          "prediction folder ends in a traceback", "checkpoint / log / prediction folder inside a regular file",
          "exit 2 before any step: 'Cannot write <what> (<option>) to <folder> (NotADirectoryError: Not a "
          "directory); choose a writable folder.'", check=check_unwritable_outputs),
    Fault("diverged", "A diverging run (loss NaN) trains on to the end with exit 0 and writes NaN weights",
          "tests.helpers.NaNAt fills a weight with NaN before step 3",
          "exit 2: 'The training loss became nan at step 3: ... The last good checkpoint is <last.ckpt>. Lower the "
          "learning rate ...'; every checkpoint finite; no finished.json",
          check=check_divergence_stops_before_the_step),
    Fault("all-unreadable", "A folder whose images are all unreadable \"trains\" on nothing with exit 0",
          "`uplift fit --data.init_args.root <folder of 4 broken files>`",
          "exit 2 before the first batch: 'None of the 4 images of data.root=<folder> can be used (a.jpg: unreadable "
          "(...); b.jpg: ...; c.png: ...; ...). Check the files ...'", check=check_all_unreadable_folder),
    Fault("png-16bit", "16-bit PNGs come out white", "load_rgb of a 16-bit PNG", "scaled to 8 bits, not clipped",
          covered_by="tests/test_imageio.py::test_16_bit_png_is_scaled_not_clipped"),
    Fault("tiff-float", "float TIFFs black", "load_rgb of a float32 TIFF in [0, 1]", "taken as [0, 1]",
          covered_by="tests/test_imageio.py::test_float_tiff_is_taken_as_unit_range"),
    Fault("exif", "EXIF-rotated photos sideways", "load_rgb of a photo with EXIF orientation 6",
          "rotated, except for the probe datasets' stored grid",
          covered_by="tests/test_imageio.py::"
                     "test_exif_orientation_is_applied_unless_the_protocol_reads_the_stored_grid"),
    Fault("nan-pixels", "NaN in the image gives NaN features without an error", "load_rgb of a float TIFF with NaN",
          "InputError naming the file",
          covered_by="tests/test_imageio.py::test_nan_pixels_are_an_error_naming_the_file"),
    Fault("seg-labels", "segmentation label values outside the dataset's classes silently become \"ignore\"",
          "VOC label with values 30 and 77; ADE20K annotation with 255",
          "InputError: 'Label file <png> holds label value(s) 30, 77 that are neither VOC label ids (0-20) nor its "
          "void value 255. Use the dataset's original label files ...'; VOC's 255 border and ADE20K's 0 stay valid",
          check=check_segmentation_label_outside_the_classes),
    Fault("predict-collision", "`uplift predict` on `a.jpg` and `a.png` writes one file and loses one result",
          "`uplift predict` on a folder with a.jpg and a.png", "as many output files as for a.jpg and b.png",
          check=check_predict_name_collision),
    Fault("predict-tiny-image", "one image smaller than a patch aborts the whole run without naming the file",
          "`uplift predict` (own size) on a folder with a 56x56 and an 8x8 image",
          "tiny.png named (skipped with a warning, or one error), no traceback",
          check=check_predict_image_smaller_than_a_patch),
    Fault("predict-strip", "a 10000x100 strip is resized to 44800x448 and runs out of memory",
          "`uplift predict` of a 10000x100 strip with data.predict_size 448 (44800x448)",
          "features at <= 1024x1024 pixels, aspect kept (max_pixels of the feature extractor, which predict uses)",
          check=check_predict_strip_is_bounded),
    Fault("probe-ckpt-path", "`uplift test --config <probe config> --ckpt_path X` ignores `--ckpt_path`",
          "`uplift test` of tests/conf/probe_voc.yaml whose probe_checkpoint does not exist, with --ckpt_path",
          "scored with the --ckpt_path probe: the same metrics as naming it as probe_checkpoint",
          check=check_probe_test_takes_ckpt_path),
    # ---------------------------------------------------------------- untrusted input executes code
    Fault("ckpt-url-pickle", "`--ckpt_path http://...` goes through Lightning's loader with `weights_only=False`",
          "`uplift validate --ckpt_path http://127.0.0.1:<port>/evil.ckpt` (a pickle running `touch <marker>`)",
          "no marker; exit 2: '--ckpt_path <url>: <cached file> holds Python objects that a checkpoint of tensors does "
          "not (Trying to load unsupported GLOBAL posix.system ...); it was refused and nothing in it ran. ...'",
          check=check_ckpt_url_pickle_never_runs),
    Fault("makefile-args", "Makefile variables (`SCALE`, `ARGS`) reach the shell unquoted",
          "make reproduce-table1 ARGS='--rows \"uplift; touch M\" $(touch M) `touch M` *' SCALE='tiny; touch M'",
          "no marker; the program gets each word as data (quotes group words, nothing expands)",
          check=check_makefile_variables_are_data),
    Fault("peer-trust-repo", "Peer rows call `torch.hub.load(..., trust_repo=True)` without saying so",
          "a peer row without / with trust_repo", "trust_repo passed only when the row opts in",
          covered_by="tests/test_peer_upsamplers.py::test_trust_repo_is_passed_only_when_the_row_opts_in"),
    # ---------------------------------------------------------------- errors that are tracebacks or say too little
    Fault("input-dtypes", "fp16/bf16/float64/uint8 inputs on CPU raise raw torch errors",
          "UPLiFT forward with a float16 / bfloat16 / float64 / uint8 image", "ValueError naming the dtype",
          check=check_model_input_dtypes),
    Fault("huge-steps", "huge `steps` allocate for seconds then die in the allocator",
          "UPLiFT forward with steps=30 (memory capped at 5 GB)", "ValueError naming steps, in under a second",
          check=check_huge_steps_are_refused_up_front),
    Fault("output-size-int", "`output_size=56` is a `TypeError`", "UPLiFT forward with output_size=56",
          "ValueError naming output_size", check=check_output_size_int),
    Fault("safetensors-broken", "a truncated or pickled `.safetensors` is \"header too large\" without the file's name",
          "load_uplift of a half .safetensors", "WeightsError naming the file",
          covered_by="tests/test_weights.py::test_broken_files_name_themselves"),
    Fault("unknown-preset", "an unknown preset name does not list the presets",
          "from_official(w, 'dinov2-s15'), UPLiFTConfig.preset, load_uplift(f, config='dinov2-s15')",
          "ConfigError: 'Unknown UPLiFT preset 'dinov2-s15' (did you mean 'dinov2-s14'?); the presets are ...'",
          check=check_unknown_preset),
    Fault("config-json", "an invalid `config.json` is a raw `JSONDecodeError`", "config.json cut short",
          "WeightsError: '<config.json> is not a valid UPLiFT config.json (JSONDecodeError: ...); write it with ...'",
          check=check_invalid_config_json),
    Fault("bad-ckpt", "a truncated `.ckpt` and a checkpoint of another task or width are tracebacks",
          "`uplift validate --ckpt_path` of a cut .ckpt, of a wider model's, of a probe's; load_uplift of them",
          "exit 2, one line each: '<file> is not a readable checkpoint (...)', 'The --ckpt_path checkpoint does not "
          "fit the configured model ...', '... another task?'", check=check_bad_ckpt_path),
    Fault("bad-ckpt-python", "a truncated `.ckpt` and a checkpoint of another task or width are tracebacks",
          "load_uplift of a probe's .ckpt, of another width", "WeightsError / CheckpointMismatchError listing keys",
          covered_by="tests/test_checkpoints.py::test_checkpoint_of_another_model_lists_what_does_not_match"),
    Fault("seg-corrupt-jpeg", "a corrupt segmentation JPEG is a chained traceback", "a val JPEG cut short",
          "InputError 'Cannot read image <file>'",
          covered_by="tests/test_segmentation_data.py::test_corrupt_image_is_an_error_naming_the_file"),
    Fault("options-by-name", "batch size 0, `val_fraction` 2.0 and a missing `val_root` give messages that do not name "
          "the option", "ImageDataModule / VOCDataModule / COCODepthDataModule options; --data.init_args.batch_size 0",
          "ConfigError 'data.batch_size must be a positive integer, got 0.' (and val_fraction, val_batch_size); "
          "'data.val_root: <dir> does not exist. Point `data.val_root` at ...'",
          check=check_datamodule_options_name_themselves),
    Fault("yaml-typos", "YAML typos are named under fifty lines of usage, one at a time",
          "`uplift fit --config` of a file with 4 misspelt keys at 4 depths",
          "exit 2, one line: '<file>: unknown keys trainer.max_stepz (did you mean trainer.max_steps?), ... . Fix the "
          "spelling; `uplift fit --help` lists the options.'; no usage text; a bad value: one line naming its key",
          check=check_yaml_typos),
]

#: The issue's items, as it words them: every one needs a row above.
ISSUE_ITEMS = [
    "SIGTERM (what a cluster sends before preemption)", "Resuming after Ctrl-C is not exact",
    "a cell whose fit was interrupted", "cached cells are reused when other arguments were given",
    "A second `uplift fit` into the same run folder", "rewrites the user's own `./config.yaml`",
    "An unwritable checkpoint folder", "an unwritable log or prediction folder", "A diverging run",
    "images are all unreadable", "16-bit PNGs", "float TIFFs", "EXIF-rotated", "NaN in the image",
    "segmentation label values outside", "`a.jpg` and `a.png`", "smaller than a patch", "10000x100 strip",
    "ignores `--ckpt_path`", "`--ckpt_path http://...`", "Makefile variables", "trust_repo=True",
    "fp16/bf16/float64/uint8", "huge `steps`", "`output_size=56`", "truncated or pickled `.safetensors`",
    "unknown preset name", "invalid `config.json`", "truncated `.ckpt`", "another task or width",
    "corrupt segmentation JPEG", "batch size 0", "`val_fraction` 2.0", "missing `val_root`", "YAML typos",
]


def _param(fault: Fault):
    marks = [pytest.mark.xfail(strict=True, reason=f"owned by {fault.owner}")] if fault.owner else []
    return pytest.param(fault, id=fault.id, marks=marks)


@pytest.mark.parametrize("fault", [_param(f) for f in FAULTS if f.check is not None])
def test_fault(fault: Fault, tmp_path: Path, capsys, monkeypatch) -> None:
    """Each row's check, in an empty working directory, given the fixtures it names."""
    import inspect

    monkeypatch.chdir(tmp_path)
    fixtures = {"tmp_path": tmp_path, "capsys": capsys, "monkeypatch": monkeypatch}
    fault.check(**{name: fixtures[name] for name in inspect.signature(fault.check).parameters})


def test_the_table_covers_every_item_of_the_issue() -> None:
    import importlib

    for item in ISSUE_ITEMS:
        assert any(item in f.item for f in FAULTS), f"no row of FAULTS for the issue's {item!r}"
    assert len({f.id for f in FAULTS}) == len(FAULTS)
    for fault in FAULTS:
        assert fault.check is not None or fault.covered_by, f"{fault.id}: neither a check nor a covering test"
        assert fault.trigger and fault.expected, fault.id
        if fault.covered_by and not fault.owner:  # another helper's test is checked where it lives
            path, _, name = fault.covered_by.rpartition("::")
            module = (importlib.import_module(path.replace("/", ".").removesuffix(".py")) if path
                      else sys.modules[__name__])
            assert callable(getattr(module, name or fault.covered_by, None)), f"{fault.id}: no test {fault.covered_by}"


# ------------------------------------------------------------------------------------------ real signals


def _run_uninterrupted(folder: Path) -> dict:
    process = _spawn(folder)
    return {"code": process.wait(timeout=300), "err": _stderr(folder)}


def _interrupt_then_resume(folder: Path, signum: int, hold_at: int) -> dict:
    """`uplift fit` whose batch at global step ``hold_at`` waits in flight for a signal (tests.helpers.LossLog):
    ``signum`` then, and afterwards the same command with --ckpt_path."""
    process = _spawn(folder, hold_at=hold_at)
    _wait_for(process, (folder / "losses.held").exists)
    process.send_signal(signum)
    result = {"code": process.wait(timeout=300), "err": _stderr(folder)}
    resumed = _spawn(folder, "--ckpt_path", str(folder / "run" / "checkpoints" / "last.ckpt"))
    return dict(result, resumed_code=resumed.wait(timeout=300), resumed_err=_stderr(folder))


def _sigterm_ddp(folder: Path) -> dict:
    """Two DDP processes on CPU (global batch 4); SIGTERM to rank 0 alone while its 4th batch is held in flight."""
    import socket

    with socket.socket() as probe:  # a port that is free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    process = _spawn(folder, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.init_args.batch_size", "4",
                     hold_at=3, env=env)
    _wait_for(process, (folder / "losses.held").exists)
    process.send_signal(signal.SIGTERM)
    return {"code": process.wait(timeout=300), "err": _stderr(folder)}


def _sigint_twice(folder: Path) -> dict:
    """A checkpoint every step; step 2 then waits 60 s "in flight": SIGINT, and again 0.5 s later."""
    process = _spawn(folder, delay=60.0, every_n_train_steps=1)
    last = folder / "run" / "checkpoints" / "last.ckpt"
    _wait_for(process, lambda: len(_losses(folder)) >= 1 and last.is_file())
    time.sleep(0.5)  # inside step 2's wait
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    second = time.monotonic()
    code = process.wait(timeout=300)
    return {"code": code, "err": _stderr(folder), "seconds": time.monotonic() - second}


def _spawn(folder: Path, *args: str, delay: float = 0.0, hold_at: Optional[int] = None,
           env: Optional[dict[str, str]] = None, **checkpoint) -> subprocess.Popen:
    """``uplift fit`` of (a copy of) faults.yaml in a subprocess working in ``folder``; stderr to ``stderr.txt``
    there (one file per run: the previous run's is kept as ``stderr.1.txt``)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "faults.yaml"
    if not config.exists():
        _config(folder, delay=delay, hold_at=hold_at, checkpoint=checkpoint)
    if (folder / "stderr.txt").exists():
        (folder / "stderr.txt").rename(folder / "stderr.1.txt")
    with (folder / "stderr.txt").open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "tasks", "fit", "--config", str(config), *args], cwd=folder,
                                env=dict(_env(), **(env or {})), stdout=subprocess.DEVNULL, stderr=err)


def _stderr(folder: Path) -> str:
    return (folder / "stderr.txt").read_text()


def _wait_for(process: subprocess.Popen, condition: Callable[[], bool], timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended early: {process.args}"
        assert time.monotonic() < end, "the run made no progress"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def signal_runs(tmp_path_factory) -> dict[str, dict]:
    """Every real-signal scenario, run side by side (each waits on its own subprocesses)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("signals")
    scenarios = {"uninterrupted": (_run_uninterrupted,), "twice": (_sigint_twice,), "ddp": (_sigterm_ddp,),
                 # SIGINT in the last batch of epoch 0 (the 4th, from step 3), SIGTERM mid-epoch 1 (the 6th)
                 "SIGINT": (_interrupt_then_resume, signal.SIGINT, 3),
                 "SIGTERM": (_interrupt_then_resume, signal.SIGTERM, 5)}
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {name: pool.submit(run, root / name, *args) for name, (run, *args) in scenarios.items()}
        results = {name: future.result() for name, future in futures.items()}
    for name in scenarios:
        results[name]["folder"] = root / name
    return results


@pytest.mark.parametrize(("name", "stopped_at"), [("SIGINT", 4), ("SIGTERM", 6)])
def test_signals_mid_epoch_save_and_resume_exactly(signal_runs: dict[str, dict], name: str, stopped_at: int) -> None:
    """The signal lands in a batch in flight (the 4th: the last of epoch 0; the 6th: mid-epoch 1); the run stops
    after it, saves, exits 128 + n naming the checkpoint, and the resumed run continues the very loss sequence."""
    reference, run = signal_runs["uninterrupted"], signal_runs[name]
    assert reference["code"] == 0, reference["err"][-3000:]
    expected = _losses(reference["folder"])
    assert [s for s, _ in expected] == list(range(1, MAX_STEPS + 1))
    folder = run["folder"]
    last = folder / "run" / "checkpoints" / "last.ckpt"
    assert run["code"] == 128 + getattr(signal, name), run["err"][-3000:]
    assert f"uplift: {name} received: stopping after the batch in flight, then saving." in run["err"]
    stop = re.search(rf"uplift: interrupted by {name} at step (\d+): its state at step \1 is saved in "
                     rf"{re.escape(str(last))}; resume with the same command and `--ckpt_path "
                     rf"{re.escape(str(last))}`\.\n$", run["err"])
    assert stop and "Traceback" not in run["err"], run["err"][-3000:]
    assert int(stop.group(1)) == stopped_at, "not stopped after the batch in flight"
    assert run["resumed_code"] == 0, run["resumed_err"][-3000:]
    assert _losses(folder) == expected, "interrupted + resumed losses differ from the uninterrupted run's"
    assert json.loads((folder / "run" / "finished.json").read_text())["global_step"] == MAX_STEPS


def test_a_second_sigint_stops_at_once(signal_runs: dict[str, dict]) -> None:
    """The first SIGINT waits for the step in flight (here 60 s long); the second stops the run at once, without
    saving the half step: the checkpoint to resume from is the last one written before (step 1's)."""
    run = signal_runs["twice"]
    last = run["folder"] / "run" / "checkpoints" / "last.ckpt"
    assert run["code"] == 130, run["err"][-3000:]
    assert run["seconds"] < 30, "the second SIGINT did not stop the run at once"
    assert run["err"].endswith(
        f"uplift: stopped at once by a second SIGINT at step 1, without saving the batch in flight; resume from the "
        f"last checkpoint written before, {last}: the same command and `--ckpt_path {last}`.\n"), run["err"][-3000:]
    assert "Traceback" not in run["err"]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1


@pytest.mark.slow
def test_sigterm_to_one_ddp_rank_stops_every_rank_after_the_same_batch(signal_runs: dict[str, dict]) -> None:
    """The ranks agree each step: a signal that only rank 0 received stops both after the batch in flight (the 4th),
    with one checkpoint of that step; nothing hangs in a collective."""
    run = signal_runs["ddp"]
    last = run["folder"] / "run" / "checkpoints" / "last.ckpt"
    assert run["code"] == 128 + signal.SIGTERM, run["err"][-3000:]
    assert f"uplift: interrupted by SIGTERM at step 4: its state at step 4 is saved in {last}" in run["err"]
    assert "Traceback" not in run["err"]
    steps = sorted(step for step, _ in _losses(run["folder"]))
    assert steps == [1, 1, 2, 2, 3, 3, 4, 4], steps  # each rank logged the same 4 steps
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
