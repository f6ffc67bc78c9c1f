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
import csv
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]

#: The paper's Table 1 (DINOv2-S/14, 448x448; time on an A5000): row -> (params M, ms, cells)
PAPER: dict[str, dict[str, Any]] = {
    "nearest": {"params": None, "ms": 0.6, "coco": (56.41, 77.11), "voc": (78.29, 94.37), "ade20k": (37.86, 72.17),
                "cityscapes": (54.87, 90.56), "depth": (56.66, 0.73)},
    "bilinear": {"params": None, "ms": 2.8, "coco": (59.41, 79.28), "voc": (81.62, 95.44), "ade20k": (40.43, 74.12),
                 "cityscapes": (59.71, 92.56), "depth": (58.83, 0.68)},
    "featup": {"params": 0.2, "ms": 109.6, "coco": (61.77, 80.99), "voc": (83.52, 96.06), "ade20k": (42.07, 75.52),
               "cityscapes": (60.50, 93.12), "depth": (60.01, 0.66)},
    "loftup": {"params": 4.3, "ms": 223.5, "coco": (62.19, 81.35), "voc": (84.63, 96.33), "ade20k": (42.16, 75.79),
               "cityscapes": (62.09, 93.55), "depth": (58.69, 0.68)},
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
    "featup": ("FeatUp", "uplift.upsamplers.FeatUpJBU", {}),
    "loftup": ("LoftUp", "uplift.upsamplers.LoftUp", {}),
    "jafar": ("JAFAR", "uplift.upsamplers.JAFAR", {}),
    "anyup": ("AnyUp", "uplift.upsamplers.AnyUp", {}),
    "uplift": ("UPLiFT", "uplift.upsamplers.UPLiFTUpsampler", {"weights": "dinov2-s14"}),
}
TINY_ROOTS = {"coco": "tests/data/cocostuff", "voc": "tests/data/voc", "ade20k": "tests/data/ade20k",
              "cityscapes": "tests/data/cityscapes", "depth": "tests/data/cocostuff"}
DATASETS = {  # name -> (column title, metric keys, full config, tiny config)
    "coco": ("COCO", ("test/mIoU", "test/acc"), "configs/probe_coco.yaml", "tests/conf/probe_coco.yaml"),
    "voc": ("VOC", ("test/mIoU", "test/acc"), "configs/probe_voc.yaml", "tests/conf/probe_voc.yaml"),
    "ade20k": ("ADE20K", ("test/mIoU", "test/acc"), "configs/probe_ade20k.yaml", "tests/conf/probe_ade20k.yaml"),
    "cityscapes": ("Cityscapes", ("test/mIoU", "test/acc"), "configs/probe_cityscapes.yaml", "tests/conf/probe_cityscapes.yaml"),
    "depth": ("COCO depth", ("test/delta1", "test/rmse"), "configs/depth_coco.yaml", "tests/conf/depth.yaml"),
}
TINY_BANNER = ("!" * 100 + "\nSCALE=tiny: generated tiny datasets, a tiny RANDOM backbone and a few steps. This tests the "
               "pipeline end to end; the numbers below are MEANINGLESS.\n" + "!" * 100)


@dataclass
class Plan:
    scale: str
    results: Path
    rows: list[str]
    datasets: list[str]
    uplift_weights: Optional[str] = None
    extra: list[str] = field(default_factory=list)

    @property
    def cells_dir(self) -> Path:
        return self.results / "table1"

    def cell_key(self, row: str) -> str:
        """Cached cells are named after what produced them: another UPLiFT checkpoint, another cell."""
        if row == "uplift" and self.uplift_weights:
            import hashlib

            return f"uplift-{hashlib.sha1(self.uplift_weights.encode()).hexdigest()[:8]}"
        return row


# ------------------------------------------------------------------------------------------ cells


def _row_args(plan: Plan, row: str) -> list[str]:
    _, class_path, init = ROWS[row]
    init = dict(init)
    if row == "uplift" and plan.uplift_weights:
        init["weights"] = plan.uplift_weights
    args = [f"--model.init_args.upsampler.class_path={class_path}"]
    args += [f"--model.init_args.upsampler.init_args.{k}={v}" for k, v in init.items()]
    return args


def _tiny_data_args(dataset: str, run_dir: Path) -> list[str]:
    args = [f"--data.init_args.root={REPO / TINY_ROOTS[dataset]}"]
    if dataset == "depth":  # keep the (tiny, random) pseudo-depth cache out of tests/data
        args.append(f"--data.init_args.cache_dir={run_dir / 'depth_cache'}")
    return args


def run_cell(plan: Plan, row: str, dataset: str) -> dict[str, Any]:
    """Fit then test one probe; returns the metrics, or why the row is unavailable."""
    from tasks.cli import _user_error, run_cli
    from uplift.upsamplers import UpsamplerUnavailableError

    _, keys, full, tiny = DATASETS[dataset]
    config = str(REPO / (tiny if plan.scale == "tiny" else full))
    run_dir = plan.cells_dir / f"{plan.cell_key(row)}__{dataset}"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    common = [*_row_args(plan, row), f"--trainer.default_root_dir={run_dir}",
              f"--trainer.callbacks.dirpath={checkpoint.parent}", f"--model.init_args.probe_checkpoint={checkpoint}",
              *(_tiny_data_args(dataset, run_dir) if plan.scale == "tiny" else []), *plan.extra]
    try:
        if not checkpoint.is_file():  # an interrupted fit restarts; a finished one is reused
            run_cli(["fit", "--config", config, *common])
        cli = run_cli(["test", "--config", config, *common, f"--ckpt_path={checkpoint}"])
    except Exception as err:
        cause = _user_error(err) or err  # our own errors come first in that search
        if isinstance(cause, UpsamplerUnavailableError):
            return {"status": "unavailable", "reason": str(cause).splitlines()[0]}
        raise RuntimeError(f"{row} x {dataset} failed: {cause}") from err
    metrics = cli.trainer.callback_metrics
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise RuntimeError(f"{row} x {dataset}: the test run logged no {missing}")
    return {"status": "done", "metrics": {k: float(metrics[k]) for k in keys}}


def time_row(plan: Plan, row: str, repeats: int = 20, warmup: int = 5) -> dict[str, Any]:
    """Parameters and median upsampling time for one 448x448 image (batch 1) on the available device."""
    import torch

    from tasks.common import BackboneConfig
    from uplift import upsamplers
    from uplift.upsamplers import UpsamplerUnavailableError

    _, class_path, init = ROWS[row]
    init = dict(init)
    if row == "uplift" and plan.uplift_weights:
        init["weights"] = plan.uplift_weights
    try:
        upsampler = getattr(upsamplers, class_path.rsplit(".", 1)[1])(**init)
    except UpsamplerUnavailableError as err:
        return {"status": "unavailable", "reason": str(err).splitlines()[0]}
    side = 56 if plan.scale == "tiny" else 448
    backbone = (BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, img_size=56))
                if plan.scale == "tiny" else BackboneConfig(pretrained=False))  # timing needs no trained weights
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = backbone.build().to(device)
    upsampler = upsampler.to(device).eval()
    image = torch.rand(1, 3, side, side, device=device)
    with torch.no_grad():
        low = model(image)
        normalised = model.normalize(image)
        times = []
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            upsampler(normalised, low, (side, side))
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return {"status": "done", "params": upsampler.num_parameters(), "ms": statistics.median(times),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "side": side}


def cached(path: Path, compute) -> dict[str, Any]:
    """Run ``compute`` unless ``path`` holds its result from an earlier (interrupted) run. Only finished
    results are kept: an unavailable row is tried again next time (its code may be there by then)."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    if result.get("status") == "done":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------ table


def _fmt(value: Optional[float], scale: float = 100.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def write_table(plan: Plan, cells: dict[tuple[str, str], dict], timings: dict[str, dict]) -> tuple[Path, Path]:
    head = ["Method", "Params (M)", "Time (ms)"]
    for ds in plan.datasets:
        title, keys, _, _ = DATASETS[ds]
        head += [f"{title} {'δ1' if ds == 'depth' else 'mIoU'}", f"{title} {'RMSE' if ds == 'depth' else 'Acc'}"]
    lines = ["# Table 1, reproduced" + (" (SCALE=tiny: MEANINGLESS numbers, pipeline test only)" if plan.scale == "tiny" else ""),
             "", "Each cell: ours (paper). Time: median per image on "
             + ", ".join(sorted({t.get('device', '?') for t in timings.values() if t.get('status') == 'done'}) or ["-"])
             + "; the paper's is on an A5000.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows_csv = []
    for row in plan.rows:
        label = ROWS[row][0]
        paper = PAPER.get(row, {})
        timing = timings.get(row, {})
        params = timing.get("params")
        cells_md = [label,
                    f"{'-' if not params else f'{params / 1e6:.2f}'} ({paper.get('params') or '-'})",
                    f"{_fmt(timing.get('ms'), 1, 1)} ({paper.get('ms', '-')})"]
        for ds in plan.datasets:
            cell = cells.get((row, ds), {})
            keys = DATASETS[ds][1]
            ours = cell.get("metrics", {})
            paper_vals = paper.get(ds, (None, None))
            for key, ref in zip(keys, paper_vals):
                scale = 1.0 if key.endswith("rmse") else 100.0
                value = _fmt(ours.get(key), scale) if cell.get("status") == "done" else "n/a"
                cells_md.append(f"{value} ({ref if ref is not None else '-'})")
                rows_csv.append({"method": label, "dataset": ds, "metric": key.split("/")[1],
                                 "ours": ours.get(key, ""), "paper": ref if ref is not None else "",
                                 "status": cell.get("status", "missing"), "reason": cell.get("reason", "")})
        rows_csv.append({"method": label, "dataset": "-", "metric": "params", "ours": params or "",
                         "paper": paper.get("params") or "", "status": timing.get("status", ""), "reason": timing.get("reason", "")})
        rows_csv.append({"method": label, "dataset": "-", "metric": "time_ms", "ours": timing.get("ms", ""),
                         "paper": paper.get("ms", ""), "status": timing.get("status", ""), "reason": timing.get("reason", "")})
        lines.append("| " + " | ".join(cells_md) + " |")
    unavailable = {row: c.get("reason") for (row, _), c in cells.items() if c.get("status") == "unavailable"}
    if unavailable:
        lines += ["", "Unavailable rows (their code or weights could not be loaded here):"]
        lines += [f"- {reason}" for reason in unavailable.values()]
    lines += ["", "LiFT and LiFT-2x have no official DINOv2-S/14 weights (the paper trained its own) and are not rows here."]
    md, csv_path = plan.results / "table1.md", plan.results / "table1.csv"
    md.write_text("\n".join(lines) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "dataset", "metric", "ours", "paper", "status", "reason"])
        writer.writeheader()
        writer.writerows(rows_csv)
    return md, csv_path


# ------------------------------------------------------------------------------------------ main


def train_tiny_uplift(plan: Plan) -> str:
    """SCALE=tiny has no released UPLiFT for its 32-channel toy backbone: train one for a few steps."""
    from tasks.cli import run_cli

    target = plan.cells_dir / "tiny_uplift" / "checkpoints" / "last.ckpt"
    if not target.is_file():
        run_cli(["fit", "--config", str(REPO / "tests/conf/predictive.yaml"), "--trainer.max_steps=10",
                 f"--trainer.default_root_dir={target.parent.parent}", "--trainer.enable_checkpointing=true",
                 "--trainer.callbacks+=tasks.callbacks.RunCheckpoint", f"--trainer.callbacks.dirpath={target.parent}"])
    return str(target)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--results", default="results", help="output folder (cells are cached in <results>/table1/)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--uplift-weights", default=None, help="UPLiFT row: release name, save_pretrained dir or .ckpt "
                        "(default: the released dinov2-s14)")
    args, extra = parser.parse_known_args(argv)  # the rest goes to every `uplift fit/test`, e.g. --data.init_args.root
    plan = Plan(args.scale, Path(args.results) / ("tiny" if args.scale == "tiny" else ""), args.rows, args.datasets,
                args.uplift_weights, extra)

    from tqdm import tqdm

    if plan.scale == "tiny":
        print(TINY_BANNER, flush=True)
        if "uplift" in plan.rows and not plan.uplift_weights:
            plan.uplift_weights = train_tiny_uplift(plan)
    cells: dict[tuple[str, str], dict] = {}
    timings: dict[str, dict] = {}
    jobs = [(row, ds) for row in plan.rows for ds in plan.datasets]
    bar = tqdm(jobs, desc="Table 1", unit="cell", file=sys.stdout)
    for row, ds in bar:
        bar.set_description(f"Table 1: {ROWS[row][0]} x {DATASETS[ds][0]}")
        if row not in timings:
            timings[row] = cached(plan.cells_dir / f"{plan.cell_key(row)}__timing.json", lambda: time_row(plan, row))
        if timings[row].get("status") == "unavailable":  # no code/weights: skip its fits too
            cells[(row, ds)] = timings[row]
            continue
        cells[(row, ds)] = cached(plan.cells_dir / f"{plan.cell_key(row)}__{ds}.json", lambda: run_cell(plan, row, ds))
    md, csv_path = write_table(plan, cells, timings)
    print("\n" + md.read_text())
    if plan.scale == "tiny":
        print(TINY_BANNER)
    print(f"Wrote {md} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
