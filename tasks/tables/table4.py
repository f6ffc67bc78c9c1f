"""``make reproduce-table4``: zero-shot 256 -> 1024 image super-resolution on FacesHQ and LHQ, beside the paper's Table 4.

Every cell (dataset x row) is one ``uplift test --config configs/sr_<dataset>.yaml --model.init_args.method <row>``
(:class:`tasks.superres.SuperResolutionTask`: CFM's protocol, see its docs and the README's "Protocols"): SSIM, PSNR,
FID, patch-FID and the time per image. Rows: ``bilinear``, ``nearest`` (latent space, the paper's baselines) and
``uplift``; ``--rows ... psu psu_vae`` adds CFM's pixel-space bilinear path. CFM's own row is the paper's (CFM is not
part of this repository). Each finished cell is stored under ``<results>/table4/`` with the arguments that produced it
and is reused when they (and the configs) are unchanged. Results: ``<results>/table4.md`` and ``.csv``.

    python -m tasks.tables.table4 --faceshq /data/celeba_hq /data/ffhq --lhq /data/lhq_1024_jpg
    python -m tasks.tables.table4 --scale tiny      # pipeline test: MEANINGLESS numbers

Further arguments go to every ``uplift test`` (e.g. ``--model.init_args.aggregation=image``,
``--trainer.devices=4 --trainer.strategy=ddp``). ``--scale tiny`` runs the tiny configs of ``tests/conf/`` on the
generated 64 px images of ``tests/data/{faceshq,lhq}`` (tiny random VAE, UPLiFT and FID features) on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tasks.tables import (REPO, TINY_BANNER, ResultsCache, args_key, cell, config_stamp, main_guard, report,
                          results_dir, test_metrics, write_table)

ROWS = {"bilinear": "Bilinear", "nearest": "Nearest", "uplift": "UPLiFT",
        "psu": "Bilinear, pixel space (CFM's psu)", "psu_vae": "Bilinear, pixel space, through the VAE"}
DEFAULT_ROWS = ["bilinear", "nearest", "uplift"]
DATASETS = {  # name -> (column title, full config, tiny config, tiny data)
    "faceshq": ("FacesHQ", "configs/sr_faceshq.yaml", "tests/conf/sr_faceshq.yaml", "tests/data/faceshq"),
    "lhq": ("LHQ", "configs/sr_lhq.yaml", "tests/conf/sr_lhq.yaml", "tests/data/lhq"),
}
METRICS = ("ssim", "psnr", "fid", "pfid")
KEYS = ("test/ssim", "test/psnr", "test/images", "test/ms_per_image")
OPTIONAL_KEYS = ("test/mse", "test/fid", "test/pfid", "test/params")

#: The paper's Table 4 (5k images, 256 -> 1024): dataset -> row -> (iters, params M, SSIM, PSNR, FID, p-FID).
#: The first column group of the paper's table is FacesHQ (CFM 113M; UPLiFT better only in SSIM there), the
#: second LHQ (CFM 306M, "3x the parameter count for ... LHQ"; UPLiFT better in SSIM and PSNR).
PAPER: dict[str, dict[str, tuple]] = {
    "faceshq": {"bilinear": (1, None, 0.72, 21.74, 108.12, 176.90), "nearest": (1, None, 0.66, 20.48, 193.08, 332.28),
                "cfm": (50, 113, 0.82, 30.40, 1.36, 1.62), "uplift": (2, 53, 0.84, 29.93, 5.20, 6.62)},
    "lhq": {"bilinear": (1, None, 0.63, 22.09, 147.65, 224.70), "nearest": (1, None, 0.60, 21.08, 241.55, 288.66),
            "cfm": (50, 306, 0.69, 25.69, 2.27, 2.38), "uplift": (2, 53, 0.73, 26.70, 5.29, 7.23)},
}
#: Section 5: "an inference time of only 271 milliseconds per image" (UPLiFT, A100); no per-row times otherwise.
PAPER_UPLIFT_MS = 271.0


@dataclass
class Plan:
    scale: str
    results: Path
    rows: list[str]
    datasets: list[str]
    roots: dict[str, list[str]] = field(default_factory=dict)
    uplift_weights: Optional[str] = None
    extra: list[str] = field(default_factory=list)

    @property
    def tiny(self) -> bool:
        return self.scale == "tiny"

    @property
    def cache(self) -> ResultsCache:
        return ResultsCache(self.results / "table4")

    def weights_stamp(self) -> Optional[list]:
        """Size and time of an UPLiFT weights file, so retrained weights at the same path are new cells."""
        path = Path(self.uplift_weights) if self.uplift_weights else None
        return [path.stat().st_size, path.stat().st_mtime_ns] if path is not None and path.exists() else None


def cell_args(plan: Plan, dataset: str, row: str) -> tuple[str, list[str]]:
    """The config of ``dataset`` and the overrides that select ``row`` (its data folders, UPLiFT's weights)."""
    _, full, tiny, tiny_data = DATASETS[dataset]
    config = str(REPO / (tiny if plan.tiny else full))
    args = [f"--model.init_args.method={row}"]
    if row == "uplift" and plan.uplift_weights:
        args.append(f"--model.init_args.weights={plan.uplift_weights}")
    roots = [str(REPO / tiny_data)] if plan.tiny else plan.roots.get(dataset)
    if roots:
        args.append(f"--data.init_args.roots={json.dumps(roots)}")
    return config, [*args, *plan.extra]


def run_cell(plan: Plan, dataset: str, row: str) -> dict[str, Any]:
    config, args = cell_args(plan, dataset, row)
    cell_dir = plan.results / "table4" / f"{dataset}__{row}"
    # --verbose=false: the driver prints the whole table at the end, not each run's
    metrics = test_metrics(config, [*args, f"--trainer.default_root_dir={cell_dir}", "--verbose=false"], KEYS,
                           OPTIONAL_KEYS)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"status": "done", "metrics": metrics, "device": device}


def write_results(plan: Plan, cells: dict[tuple[str, str], dict]) -> tuple[Path, Path]:
    header = ["Method", "Iters"]
    for ds in plan.datasets:
        title = DATASETS[ds][0]
        header += [f"{title} {h}" for h in ("Params (M)", "SSIM ↑", "PSNR ↑", "FID ↓", "p-FID ↓", "ms/img")]
    rows, records = [], []
    for row in [*plan.rows, "cfm"]:
        label = "CFM (paper only, not run)" if row == "cfm" else ROWS[row]
        paper_iters = PAPER["faceshq"].get(row, (None,))[0]
        ours_iters = "-" if row == "cfm" else (2 if row == "uplift" else 1)
        line = [label, f"{ours_iters} ({'-' if paper_iters is None else paper_iters})"]
        for ds in plan.datasets:
            result = cells.get((ds, row), {})
            ours = {k.split("/")[-1]: v for k, v in result.get("metrics", {}).items()}
            paper = PAPER[ds].get(row, (None,) * 6)
            params = ours.get("params")
            values = {"params_m": (None if params is None else params / 1e6, paper[1], 1),
                      **{m: (ours.get(m), ref, 2) for m, ref in zip(METRICS, paper[2:])},
                      "ms_per_image": (ours.get("ms_per_image"), PAPER_UPLIFT_MS if row == "uplift" else None, 1)}
            line += [cell(v, ref, digits) for v, ref, digits in values.values()]
            values["mse"] = (ours.get("mse"), None, 4)
            records += [{"method": label, "dataset": ds, "metric": metric, "ours": "" if v is None else v,
                         "paper": "" if ref is None else ref, "images": int(ours["images"]) if "images" in ours else "",
                         "status": "paper" if row == "cfm" else result.get("status", "missing"),
                         "reason": result.get("reason", "")} for metric, (v, ref, _) in values.items()]
        rows.append(line)
    devices = sorted({c["device"] for c in cells.values() if c.get("status") == "done"}) or ["-"]
    counts = {ds: next((int(c["metrics"]["test/images"]) for (d, _), c in cells.items()
                        if d == ds and c.get("status") == "done"), 0) for ds in plan.datasets}
    low, high, patch = ("16", "64", "32") if plan.tiny else ("256", "1024", "512")
    notes = [f"Each cell: ours (paper); '-': no such value. {low} -> {high} px, CFM's protocol: native {high} centre crop "
             f"in [-1, 1], bilinear down to {low} without antialiasing, VAE latents upsampled 4x, decoded; "
             + ", ".join(f"{DATASETS[d][0]}: {k} images" for d, k in counts.items()) + ".",
             "SSIM (unclamped outputs), PSNR (clamped) and MSE are CFM's, averaged over batches as CFM does; p-FID: 4 "
             f"random {patch} px crops per image at the same places in output and original (seeded per image); FID on "
             "CFM's truncated uint8. UPLiFT outputs are colour-corrected; the latent baselines are decoded as they are.",
             f"ms/img: encode + upsample + decode per image on {', '.join(devices)} (first batch excluded); the paper "
             f"quotes 271 ms per image for UPLiFT on an A100 (section 5), no other times.",
             "CFM's row is the paper's (adapted from CFM); CFM is not part of this repository."]
    unavailable = sorted({c["reason"] for c in cells.values() if c.get("status") == "unavailable"})
    if unavailable:
        notes += ["", "Unavailable rows:", *[f"- {r}" for r in unavailable]]
    return write_table(plan.results / "table4", "Table 4, reproduced: zero-shot image super-resolution", notes, header,
                       rows, records, plan.tiny)


def main(argv: Optional[list[str]] = None) -> int:
    return main_guard("tasks.tables.table4", lambda: _main(argv))


def _main(argv: Optional[list[str]]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--results", default="results", help="output folder (cells are cached in <results>/table4/)")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    for name, (title, *_rest) in DATASETS.items():
        parser.add_argument(f"--{name}", nargs="+", metavar="DIR", help=f"{title} image folders (default: the config's)")
    parser.add_argument("--uplift-weights", default=None, help="UPLiFT row: release name, .safetensors, save_pretrained "
                        "dir or .ckpt (default: the config's, the released sd15-vae)")
    args, extra = parser.parse_known_args(argv)  # the rest goes to every `uplift test`
    tiny = args.scale == "tiny"
    roots = {name: getattr(args, name) for name in DATASETS if getattr(args, name)}
    plan = Plan(args.scale, results_dir(args.results, tiny), args.rows, args.datasets, roots, args.uplift_weights, extra)
    if tiny:
        import torch

        print(TINY_BANNER, flush=True)
        torch.set_num_threads(1)  # toy models: no faster on more threads, much slower when cores are shared
    cells: dict[tuple[str, str], dict] = {}
    for ds in plan.datasets:
        for row in plan.rows:
            config, cell_argv = cell_args(plan, ds, row)
            key = args_key(config, cell_argv, config_stamp(config), plan.weights_stamp() if row == "uplift" else None)
            cells[(ds, row)] = plan.cache(f"{ds}__{row}", key, lambda: run_cell(plan, ds, row))
    md, _ = write_results(plan, cells)
    report(md, cells, tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
