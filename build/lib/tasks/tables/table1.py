"""``make reproduce-table1``: every upsampler row x every probe, beside the paper's Table 1.

For each row (nearest, bilinear, UPLiFT, and the published peers when their code and weights can be
had) and each dataset (COCO-Stuff, VOC, ADE20K, Cityscapes segmentation; COCO depth) this trains the
probe (``uplift fit``), evaluates it (``uplift test``), and measures the upsampler's parameters and
its time per image (448x448, batch 1, median over repeats after warm-up, on the available device).
Each finished cell is stored under ``results/table1/`` and is not recomputed when the command is
run again after an interruption. Results: ``results/table1.md`` and ``results/table1.csv``.

``--scale tiny`` runs the same pipeline on the generated tiny datasets in ``tests/data/`` with a tiny
random backbone (and a tiny UPLiFT trained on the spot) in a few minutes on a CPU: it tests the
pipeline, and its numbers are meaningless.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tasks.tables import (REPO, TINY_BANNER, ResultsCache, RowUnavailable, args_key, cell, fit_once, report,
                          results_dir, test_metrics, write_table)

#: The paper's Table 1 (DINOv2-S/14, 448x448; time on an A5000): row -> (params M, ms, cells)
PAPER: dict[str, dict[str, Any]] = {
    "nearest": {"params": None, "ms": 0.6, "coco": (56.41, 77.11), "voc": (78.29, 94.37), "ade20k": (37.86, 72.17),
                "cityscapes": (54.87, 90.56), "depth": (56.66, 0.73)},
    "bilinear": {"params": None, "ms": 2.8, "coco": (59.41, 79.28), "voc": (81.62, 95.44), "ade20k": (40.43, 74.12),
                 "cityscapes": (59.71, 92.56), "depth": (58.83, 0.68)},
    "lift2x": {"params": 1.2, "ms": 3.8, "coco": (58.28, 78.97), "voc": (82.46, 95.73), "ade20k": (39.74, 73.79),
               "cityscapes": (61.07, 93.09), "depth": (57.17, 0.70)},
    "lift": {"params": 1.2, "ms": 51.9, "coco": (57.42, 78.46), "voc": (80.97, 95.37), "ade20k": (38.95, 73.34),
             "cityscapes": (61.98, 93.61), "depth": (55.07, 0.73)},
    "featup": {"params": 0.2, "ms": 109.6, "coco": (61.77, 80.99), "voc": (83.52, 96.06), "ade20k": (42.07, 75.52),
               "cityscapes": (60.50, 93.12), "depth": (60.01, 0.66)},
    "loftup": {"params": 4.3, "ms": 223.5, "coco": (62.19, 81.35), "voc": (84.63, 96.33), "ade20k": (42.16, 75.79),
               "cityscapes": (62.09, 93.55), "depth": (58.69, 0.68)},
    # Table 5: LoftUp with the timm ("Hugging Face") DINOv2-S/14 instead of its original one
    "loftup-timm": {"params": 4.3, "ms": 223.5, "coco": (62.20, 81.35), "voc": (84.52, 96.30), "ade20k": (42.16, 75.77),
                    "cityscapes": (62.17, 93.56), "depth": (58.70, 0.68)},
    "jafar": {"params": 0.7, "ms": 111.7, "coco": (61.71, 81.01), "voc": (84.38, 96.22), "ade20k": (41.96, 75.43),
              "cityscapes": (61.89, 93.52), "depth": (60.59, 0.65)},
    "anyup": {"params": 0.9, "ms": 146.7, "coco": (62.08, 81.31), "voc": (84.33, 96.23), "ade20k": (42.25, 75.80),
              "cityscapes": (61.33, 93.44), "depth": (61.32, 0.63)},
    "uplift": {"params": 0.8, "ms": 79.4, "coco": (62.55, 81.57), "voc": (85.21, 96.51), "ade20k": (42.97, 76.00),
               "cityscapes": (65.38, 94.41), "depth": (61.16, 0.63)},
}
ROWS = {
    "nearest": ("Nearest", "uplift.upsamplers.Nearest", {}),
    "bilinear": ("Bilinear", "uplift.upsamplers.Bilinear", {}),
    "lift2x": ("LiFT-2x", "uplift.upsamplers.LiFT2x", {}),
    "lift": ("LiFT", "uplift.upsamplers.LiFT", {}),
    "featup": ("FeatUp", "uplift.upsamplers.FeatUpJBU", {}),
    "loftup": ("LoftUp", "uplift.upsamplers.LoftUp", {"backbone": "original"}),
    "loftup-timm": ("LoftUp + timm backbone", "uplift.upsamplers.LoftUp", {"backbone": "task"}),
    "jafar": ("JAFAR", "uplift.upsamplers.JAFAR", {}),
    "anyup": ("AnyUp", "uplift.upsamplers.AnyUp", {}),
    "uplift": ("UPLiFT", "uplift.upsamplers.UPLiFTUpsampler", {"weights": "dinov2-s14"}),
}
#: The paper's Table 1 (Table 5 adds ``loftup-timm``).
DEFAULT_ROWS = [row for row in ROWS if row != "loftup-timm"]
#: Peer rows whose code torch.hub downloads and runs: ``--trust-peer-repos`` opts in for all of them.
HUB_ROWS = ("anyup", "loftup", "loftup-timm", "featup")
TINY_ROOTS = {"coco": "tests/data/cocostuff", "voc": "tests/data/voc", "ade20k": "tests/data/ade20k",
              "cityscapes": "tests/data/cityscapes", "depth": "tests/data/cocostuff"}
DATASETS = {  # name -> (column title, metric keys, full config, tiny config)
    "coco": ("COCO", ("test/mIoU", "test/acc"), "configs/probe_coco.yaml", "tests/conf/probe_coco.yaml"),
    "voc": ("VOC", ("test/mIoU", "test/acc"), "configs/probe_voc.yaml", "tests/conf/probe_voc.yaml"),
    "ade20k": ("ADE20K", ("test/mIoU", "test/acc"), "configs/probe_ade20k.yaml", "tests/conf/probe_ade20k.yaml"),
    "cityscapes": ("Cityscapes", ("test/mIoU", "test/acc"), "configs/probe_cityscapes.yaml", "tests/conf/probe_cityscapes.yaml"),
    "depth": ("COCO depth", ("test/delta1", "test/rmse"), "configs/depth_coco.yaml", "tests/conf/depth.yaml"),
}

@dataclass
class Plan:
    scale: str
    results: Path
    rows: list[str]
    datasets: list[str]
    uplift_weights: Optional[str] = None
    lift_weights: Optional[str] = None
    extra: list[str] = field(default_factory=list)
    #: ``--trust-peer-repos``, ``--jafar-repo``, ``--jafar-weights``: what the peer rows need (see the README)
    peer_args: dict[str, dict[str, Any]] = field(default_factory=dict)

    def weights(self, row: str) -> Optional[str]:
        """The weights the driver gives a trained row (``uplift``: ours or released; LiFT rows: the trained LiFT)."""
        return self.lift_weights if row in ("lift", "lift2x") else self.uplift_weights if row == "uplift" else None

    @property
    def cells_dir(self) -> Path:
        return self.results / "table1"

    @property
    def cache(self) -> ResultsCache:
        return ResultsCache(self.cells_dir)

    def weights_stamp(self, row: str) -> Optional[list]:
        """Size and time of a row's weights file, so retrained weights at the same path make new cells."""
        weights = self.weights(row)
        path = Path(weights) if weights else None
        return [path.stat().st_size, path.stat().st_mtime_ns] if path is not None and path.is_file() else None


# ------------------------------------------------------------------------------------------ cells


def _row_args(plan: Plan, row: str) -> list[str]:
    _, class_path, init = ROWS[row]
    init = {**init, **plan.peer_args.get(row, {})}
    if plan.weights(row):
        init["weights"] = plan.weights(row)
    args = [f"--model.init_args.upsampler.class_path={class_path}"]
    args += [f"--model.init_args.upsampler.init_args.{k}={v}" for k, v in init.items()]
    return args


def _tiny_data_args(dataset: str, plan: Plan) -> list[str]:
    args = [f"--data.init_args.root={REPO / TINY_ROOTS[dataset]}"]
    if dataset == "depth":  # keep the (tiny, random) pseudo-depth cache out of tests/data
        args.append(f"--data.init_args.cache_dir={plan.cells_dir / 'depth_cache'}")
    return args


def cell_args(plan: Plan, row: str, dataset: str) -> tuple[str, list[str]]:
    """The probe config of ``dataset`` and the overrides that select ``row`` (and the tiny data)."""
    _, _, full, tiny = DATASETS[dataset]
    config = str(REPO / (tiny if plan.scale == "tiny" else full))
    return config, [*_row_args(plan, row), *(_tiny_data_args(dataset, plan) if plan.scale == "tiny" else []), *plan.extra]


def run_cell(plan: Plan, row: str, dataset: str) -> dict[str, Any]:
    """Fit (once) then test one probe; returns the metrics, or raises :class:`RowUnavailable`."""
    config, args = cell_args(plan, row, dataset)
    run_dir = plan.cells_dir / f"{row}__{dataset}-{args_key(config, args)}"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    probe = [f"--model.init_args.probe_checkpoint={checkpoint}"]
    try:
        fit_once(config, [*args, *probe], run_dir)
    except Exception as err:
        from tasks.cli import user_error
        from uplift.upsamplers import UpsamplerUnavailableError

        cause = user_error(err)
        if isinstance(cause, UpsamplerUnavailableError):
            raise RowUnavailable(str(cause).splitlines()[0]) from err
        raise
    test = [*args, *probe, f"--trainer.default_root_dir={run_dir / 'test'}", f"--ckpt_path={checkpoint}"]
    return {"status": "done", "metrics": test_metrics(config, test, DATASETS[dataset][1])}


def time_row(plan: Plan, row: str) -> dict[str, Any]:
    """Parameters and median upsampling time of one 448x448 image (batch 1) on the available device
    (``torch.utils.benchmark``: warm-up, then as many runs as fit in a second, synchronised on CUDA)."""
    import torch
    from torch.utils.benchmark import Timer

    from tasks.common import BackboneConfig
    from uplift import upsamplers
    from uplift.upsamplers import UpsamplerUnavailableError

    _, class_path, init = ROWS[row]
    init = {**init, **plan.peer_args.get(row, {})}
    if plan.weights(row):
        init["weights"] = plan.weights(row)
    try:
        upsampler = getattr(upsamplers, class_path.rsplit(".", 1)[1])(**init)
    except UpsamplerUnavailableError as err:
        raise RowUnavailable(str(err).splitlines()[0]) from err
    side = 56 if plan.scale == "tiny" else 448
    backbone = (BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, img_size=56))
                if plan.scale == "tiny" else BackboneConfig(pretrained=False))  # timing needs no trained weights
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = backbone.build().to(device)
    upsampler = upsampler.to(device).eval()
    image = torch.rand(1, 3, side, side, device=device)
    with torch.no_grad():
        low, normalised = model(image), model.normalize(image)
        for _ in range(3):  # warm-up (allocator, cuDNN autotuning)
            upsampler(normalised, low, (side, side))
        timer = Timer("upsampler(image, low, size)", globals={"upsampler": upsampler, "image": normalised, "low": low,
                                                              "size": (side, side)})
        measurement = timer.blocked_autorange(min_run_time=0.2 if plan.scale == "tiny" else 2.0)
    return {"status": "done", "params": upsampler.num_parameters(), "ms": measurement.median * 1000,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "side": side}


# ------------------------------------------------------------------------------------------ table


def write_results(plan: Plan, cells: dict[tuple[str, str], dict], timings: dict[str, dict]) -> tuple[Path, Path]:
    header = ["Method", "Params (M)", "Time (ms)"]
    for ds in plan.datasets:
        title = DATASETS[ds][0]
        header += [f"{title} {'δ1' if ds == 'depth' else 'mIoU'}", f"{title} {'RMSE' if ds == 'depth' else 'Acc'}"]
    rows, records = [], []
    for row in plan.rows:
        label, paper, timing = ROWS[row][0], PAPER.get(row, {}), timings.get(row, {})
        params = timing.get("params")
        line = [label, cell(params and params / 1e6, paper.get("params")), cell(timing.get("ms"), paper.get("ms"), 1)]
        records += [{"method": label, "dataset": "-", "metric": metric, "ours": timing.get(key, ""),
                     "paper": paper.get(key) or "", "status": timing.get("status", ""), "reason": timing.get("reason", "")}
                    for metric, key in (("params", "params"), ("time_ms", "ms"))]
        for ds in plan.datasets:
            result = cells.get((row, ds), {})
            ours = result.get("metrics", {}) if result.get("status") == "done" else {}
            for key, ref in zip(DATASETS[ds][1], paper.get(ds, (None, None))):
                line.append(cell(ours.get(key), ref, scale=1.0 if key.endswith("rmse") else 100.0))
                records.append({"method": label, "dataset": ds, "metric": key.split("/")[1], "ours": ours.get(key, ""),
                                "paper": "" if ref is None else ref, "status": result.get("status", "missing"),
                                "reason": result.get("reason", "")})
        rows.append(line)
    devices = sorted({t["device"] for t in timings.values() if t.get("status") == "done"}) or ["-"]
    notes = [f"Each cell: ours (paper); '-': not measured. Time: median per {'56' if plan.scale == 'tiny' else '448'} px "
             f"image on {', '.join(devices)}; the paper's is on an A5000."]
    unavailable = sorted({c["reason"] for c in cells.values() if c.get("status") == "unavailable"})
    if unavailable:
        notes += ["", "Unavailable rows (their code or weights could not be loaded here):", *[f"- {r}" for r in unavailable]]
    return write_table(plan.results / "table1", "Table 1, reproduced", notes, header, rows, records, plan.scale == "tiny")


# ------------------------------------------------------------------------------------------ main


#: Rows whose weights the driver trains itself when none are given: row -> (full config, tiny config). The full
#: UPLiFT row uses the released weights; the paper trained its own LiFT for DINOv2-S/14 (appendix A).
TRAINED = {"uplift": (None, "tests/conf/predictive.yaml"), "lift": ("configs/lift_dinov2_s14.yaml", "tests/conf/lift.yaml")}


def train_row_model(plan: Plan, model: str) -> str:
    """Train the model of a row (``uplift`` or ``lift``) once, for this results folder; returns its checkpoint.
    SCALE=tiny has no released weights for its 32-channel toy backbone, so it trains both for a few steps."""
    full, tiny = TRAINED[model]
    if plan.scale == "tiny":
        args = ["--trainer.max_steps=10", "--trainer.enable_checkpointing=true",
                "--trainer.callbacks+=tasks.callbacks.RunCheckpoint"]
        return str(fit_once(REPO / tiny, args, plan.cells_dir / f"tiny_{model}"))
    return str(fit_once(REPO / full, [], plan.cells_dir / model))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--results", default="results", help="output folder (cells are cached in <results>/table1/)")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS),
                        help="rows to compute (default: the paper's Table 1; loftup-timm is Table 5's other LoftUp)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--uplift-weights", default=None, help="UPLiFT row: release name, save_pretrained dir or .ckpt "
                        "(default: the released dinov2-s14)")
    parser.add_argument("--lift-weights", default=None, help="LiFT rows: a trained LiFT (.ckpt or save_lift folder); "
                        "default: trained once with configs/lift_dinov2_s14.yaml into <results>/table1/lift/ (set its "
                        "ImageNet root in that config)")
    parser.add_argument("--trust-peer-repos", action="store_true",
                        help=f"let torch.hub download and RUN the code of the peers' GitHub repositories ({', '.join(HUB_ROWS)} "
                        f"rows: `trust_repo: true`); without it torch.hub runs only repositories it already trusts")
    parser.add_argument("--jafar-repo", default=None, help="JAFAR row: a local checkout of PaulCouairon/JAFAR (its code "
                        "is imported and run; JAFAR has no torch.hub entry)")
    parser.add_argument("--jafar-weights", default=None, help="JAFAR row: its released weights (path or URL; default: "
                        "the release URL)")
    args, extra = parser.parse_known_args(argv)  # the rest goes to every `uplift fit/test`, e.g. --data.init_args.root
    tiny = args.scale == "tiny"
    peer_args: dict[str, dict[str, Any]] = {row: {"trust_repo": True} for row in HUB_ROWS if args.trust_peer_repos}
    jafar = {k: v for k, v in (("repo", args.jafar_repo), ("weights", args.jafar_weights)) if v}
    if jafar:
        peer_args["jafar"] = jafar
    plan = Plan(args.scale, results_dir(args.results, tiny), args.rows, args.datasets, args.uplift_weights,
                args.lift_weights, extra, peer_args)

    from tqdm import tqdm

    if tiny:
        print(TINY_BANNER, flush=True)
        if "uplift" in plan.rows and not plan.uplift_weights:
            plan.uplift_weights = train_row_model(plan, "uplift")
    if {"lift", "lift2x"} & set(plan.rows) and not plan.lift_weights:
        plan.lift_weights = train_row_model(plan, "lift")
    cells: dict[tuple[str, str], dict] = {}
    timings: dict[str, dict] = {}
    bar = tqdm([(row, ds) for row in plan.rows for ds in plan.datasets], desc="Table 1", unit="cell", file=sys.stdout)
    for row, ds in bar:
        bar.set_description(f"Table 1: {ROWS[row][0]} x {DATASETS[ds][0]}")
        if row not in timings:
            key = args_key(_row_args(plan, row), plan.scale, plan.weights_stamp(row))
            timings[row] = plan.cache(f"{row}__timing", key, lambda: time_row(plan, row))
        if timings[row].get("status") == "unavailable":  # no code/weights: skip its fits too
            cells[(row, ds)] = timings[row]
            continue
        config, cell_argv = cell_args(plan, row, ds)
        cells[(row, ds)] = plan.cache(f"{row}__{ds}", args_key(config, cell_argv, plan.weights_stamp(row)), lambda: run_cell(plan, row, ds))
    md, _ = write_results(plan, cells, timings)
    report(md, cells, tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
