"""``make reproduce-table2``: Stable Diffusion 1.5 512 -> UPLiFT 1024 on 5k COCO-2014 captions, beside the paper's Table 2.

Every cell is one diffusion step count: ``uplift test --config configs/t2i_coco.yaml --model.init_args.diffusion_steps
N`` (:class:`tasks.text2image.TextToImageTask`), which gives both rows of that count (SD1.5 at 512, UPLiFT at 1024):
FID, patch-FID, CLIP score and the paper's latency protocol. Rows of models this repository does not run (CFM, SDXL,
LCM SDXL) are the paper's. Each finished cell is stored under ``<results>/table2/`` with the arguments that produced
it and reused when they (and the configs) are unchanged. Results: ``<results>/table2.md`` and ``.csv``.
:mod:`tasks.tables.table3` is the same driver for reLAION (Table 3).

    python -m tasks.tables.table2 --captions /data/coco/annotations/captions_val2014.json --images /data/coco/val2014
    python -m tasks.tables.table2 --scale tiny      # pipeline test: MEANINGLESS numbers

Further arguments go to every ``uplift test`` (e.g. ``--model.init_args.fid_weights=/path/to/inception.pth``).
``--scale tiny`` runs the tiny configs of ``tests/conf/`` (tiny random SD pipeline, VAE, UPLiFT, FID features and
CLIP; 64 -> 128 px) on the generated captions of ``tests/data/coco_captions`` on the CPU.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tasks.tables import (REPO, TINY_BANNER, ResultsCache, args_key, cell, config_stamp, fmt, main_guard, report,
                          results_dir, test_metrics, write_table)

# The paper's rows: (model, steps, method, params M, resolution, s/img, CLIP, FID, p-FID); None = not in the paper.
# Table 2 (COCO, batch 4) reports s/img and FID only; Table 3 (reLAION, batch 1) also CLIP and p-FID. CFM's
# diffusion steps are not reported (the paper's "*").
PAPER: list[tuple] = [
    ("SD1.5", 25, "-", None, "512", 3.96, None, 24.88, None),
    ("SD1.5", 25, "CFM-20", 306, "512 → 1024", 8.79, None, 28.81, None),
    ("SD1.5", 25, "UPLiFT", 53, "512 → 1024", 5.15, None, 24.23, None),
    ("SDXL", 50, "-", None, "1024", 39.84, None, 24.07, None),
]

TINY_DATA = "tests/data/coco_captions"
KEYS = ("test/prompts",)
OPTIONAL_KEYS = ("test/sd/fid", "test/sd/clip", "test/sd/s_per_image", "test/uplift/fid", "test/uplift/pfid",
                 "test/uplift/clip", "test/uplift/s_per_image", "test/uplift/params", "test/latency/diffusion_s",
                 "test/latency/decode_s", "test/latency/upsample_s")


@dataclass(frozen=True)
class Spec:
    """One text-to-image table: its configs, its diffusion step counts and the paper's rows."""

    stem: str
    title: str
    config: str
    tiny_config: str
    diffusion_steps: tuple[int, ...]
    tiny_diffusion_steps: tuple[int, ...]
    paper: list[tuple]
    data_help: str
    tiny_captions: str  # in TINY_DATA


COCO = Spec("table2", "Table 2, reproduced: zero-shot COCO-5k 512 → 1024", "configs/t2i_coco.yaml",
            "tests/conf/t2i_coco.yaml", (25,), (3,), PAPER,
            "COCO: --captions .../annotations/captions_val2014.json --images .../val2014",
            "annotations/captions_val2014.json")


@dataclass
class Plan:
    spec: Spec
    scale: str
    results: Path
    diffusion_steps: list[int]
    data: dict[str, str] = field(default_factory=dict)
    uplift_weights: Optional[str] = None
    extra: list[str] = field(default_factory=list)

    @property
    def tiny(self) -> bool:
        return self.scale == "tiny"

    @property
    def cache(self) -> ResultsCache:
        return ResultsCache(self.results / self.spec.stem)

    @property
    def config(self) -> str:
        return str(REPO / (self.spec.tiny_config if self.tiny else self.spec.config))

    def weights_stamp(self) -> Optional[list]:
        path = Path(self.uplift_weights) if self.uplift_weights else None
        return [path.stat().st_size, path.stat().st_mtime_ns] if path is not None and path.exists() else None


def cell_args(plan: Plan, steps: int) -> list[str]:
    args = [f"--model.init_args.diffusion_steps={steps}"]
    if plan.uplift_weights:
        args.append(f"--model.init_args.weights={plan.uplift_weights}")
    data = dict(plan.data)
    if plan.tiny:  # the tiny data, by absolute path: runs from any folder
        data.setdefault("captions", str(REPO / TINY_DATA / plan.spec.tiny_captions))
        data.setdefault("images", str(REPO / TINY_DATA / "val2014"))
    args += [f"--data.init_args.{k}={v}" for k, v in data.items()]
    return [*args, *plan.extra]


def run_cell(plan: Plan, steps: int) -> dict[str, Any]:
    cell_dir = plan.results / plan.spec.stem / f"steps{steps}"
    # --verbose=false: the driver prints the whole table at the end, not each run's
    metrics = test_metrics(plan.config, [*cell_args(plan, steps), f"--trainer.default_root_dir={cell_dir}",
                                         "--verbose=false"], KEYS, OPTIONAL_KEYS)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"status": "done", "metrics": metrics, "device": device}


def write_results(plan: Plan, cells: dict[int, dict]) -> tuple[Path, Path]:
    spec = plan.spec
    paper = {(r[1], r[2]): r for r in spec.paper}
    header = ["Model", "Steps", "Method", "Params (M)", "Resolution", "s/img ↓", "CLIP ↑", "FID ↓", "p-FID ↓"]
    low, high = (64, 128) if plan.tiny else (512, 1024)
    rows, records = [], []
    for steps, result in sorted(cells.items()):
        m = result.get("metrics", {})
        for method, key in (("-", "sd"), ("UPLiFT", "uplift")):
            ref = paper.get((steps, method), (None,) * 9)
            resolution = f"{low}" if key == "sd" else f"{low} → {high}"
            params = m.get("test/uplift/params") if key == "uplift" else None
            values = [("params_m", None if params is None else params / 1e6, ref[3], 1),
                      ("s_per_image", m.get(f"test/{key}/s_per_image"), ref[5], 2),
                      ("clip", m.get(f"test/{key}/clip"), ref[6], 2), ("fid", m.get(f"test/{key}/fid"), ref[7], 2),
                      ("pfid", m.get(f"test/{key}/pfid"), ref[8], 2)]
            rows.append(["SD1.5", str(steps), method, cell(*values[0][1:]), resolution,
                         *[cell(v, r, d) for _, v, r, d in values[1:]]])
            records += [{"model": "SD1.5", "steps": steps, "method": method, "resolution": resolution, "metric": name,
                         "ours": "" if v is None else v, "paper": "" if r is None else r,
                         "prompts": int(m.get("test/prompts", 0)), "status": result.get("status", "missing")}
                        for name, v, r, _ in values]
    for ref in spec.paper:  # the paper's rows this run did not reproduce
        if ref[0] == "SD1.5" and ref[2] in ("-", "UPLiFT") and ref[1] in cells:
            continue
        rows.append([ref[0], str(ref[1]), f"{ref[2]} (paper only, not run)", cell(None, ref[3], 1), ref[4],
                     *[cell(None, r) for r in ref[5:]]])
    done = [c for c in cells.values() if c.get("status") == "done"]
    devices = sorted({c["device"] for c in done}) or ["-"]
    prompts = int(done[0]["metrics"].get("test/prompts", 0)) if done else 0
    latency = [f"- {steps} steps: diffusion {fmt(c['metrics'].get('test/latency/diffusion_s'), 3)} s/img, {low} decode "
               f"{fmt(c['metrics'].get('test/latency/decode_s'), 3)} s/img, UPLiFT + {high} decode "
               f"{fmt(c['metrics'].get('test/latency/upsample_s'), 3)} s/img" for steps, c in sorted(cells.items())
               if c.get("status") == "done"]
    notes = [f"Each cell: ours (paper); '-': the paper (or this run) has no such value. {prompts} prompts; FID against "
             f"as many reference images (at {high} px) on CFM's truncated uint8; p-FID: 4 random {high // 2} px crops per {high} px image "
             f"(seeded per prompt); CLIP score: the config's CLIP (the paper's: openai/clip-vit-base-patch32).", "",
             f"s/img on {', '.join(devices)} with the config's latency protocol (the paper's: torch.compile, 3 warm-up "
             f"batches, mean of 10; an A100). SD1.5 rows: diffusion + decode; UPLiFT rows add UPLiFT + decode at "
             f"{high}:", "", *latency, "",
             "Rows marked 'paper only' are the paper's (CFM rows adapted from CFM); those models are not run here."]
    return write_table(plan.results / spec.stem, spec.title, notes, header, rows, records, plan.tiny)


def main(argv: Optional[list[str]] = None, spec: Spec = COCO) -> int:
    return main_guard(f"tasks.tables.{spec.stem}", lambda: _main(argv, spec))


def _main(argv: Optional[list[str]], spec: Spec) -> int:
    parser = argparse.ArgumentParser(description=importlib.import_module(f"tasks.tables.{spec.stem}").__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--results", default="results", help=f"output folder (cells cached in <results>/{spec.stem}/)")
    parser.add_argument("--diffusion-steps", nargs="+", type=int, default=None,
                        help=f"diffusion step counts, one cell each (default: {' '.join(map(str, spec.diffusion_steps))})")
    parser.add_argument("--captions", default=None, help=f"captions or prompts file ({spec.data_help})")
    parser.add_argument("--images", default=None, help="reference image folder")
    parser.add_argument("--uplift-weights", default=None, help="release name, .safetensors, save_pretrained dir or .ckpt "
                        "(default: the config's, the released sd15-vae)")
    args, extra = parser.parse_known_args(argv)  # the rest goes to every `uplift test`
    tiny = args.scale == "tiny"
    steps = args.diffusion_steps or list(spec.tiny_diffusion_steps if tiny else spec.diffusion_steps)
    data = {k: v for k, v in (("captions", args.captions), ("images", args.images)) if v}
    plan = Plan(spec, args.scale, results_dir(args.results, tiny), steps, data, args.uplift_weights, extra)
    if tiny:
        import torch

        print(TINY_BANNER, flush=True)
        torch.set_num_threads(1)  # toy models: no faster on more threads, much slower when cores are shared
    cells: dict[int, dict] = {}
    for n in plan.diffusion_steps:
        key = args_key(plan.config, cell_args(plan, n), config_stamp(plan.config), plan.weights_stamp())
        cells[n] = plan.cache(f"steps{n}", key, lambda: run_cell(plan, n))
    md, _ = write_results(plan, cells)
    report(md, cells, tiny, "step counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
