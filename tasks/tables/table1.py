"""``make reproduce-table1``: every upsampler row x every probe, beside the paper's Table 1.

For each row (nearest, bilinear, UPLiFT, and the published peers when their code and weights can be
had) and each dataset (COCO-Stuff, VOC, ADE20K, Cityscapes segmentation; COCO depth) this trains the
probe (``uplift fit``), evaluates it (``uplift test``), and measures the upsampler's parameters and
its time per image (448x448, batch 1, median over repeats after warm-up, on the available device).
Each finished cell is stored in the probe cache every table shares (``results/probes/``, see
:mod:`tasks.tables.probes`) and is not recomputed when the command is run again after an interruption, nor
when another table (5, 8) asks for the same cell. Results: ``results/table1.md`` and ``results/table1.csv``.

``--scale tiny`` runs the same pipeline on the generated tiny datasets in ``tests/data/`` with a tiny
random backbone (and a tiny UPLiFT and LiFT trained on the spot) in a few minutes on a CPU: it tests the
pipeline, and its numbers are meaningless.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from tasks.tables.probes import (DATASETS, ROWS, Column, ProbeTable, Runner, add_common_options, add_peer_options,
                                 peer_init, run_table, standard_row, train_args)

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
#: The paper's Table 1 (Table 5 adds ``loftup-timm``).
DEFAULT_ROWS = [row for row in ROWS if row != "loftup-timm"]
COLUMNS = [Column(ds, ds) for ds in DATASETS]


# ------------------------------------------------------------------------------------------ main


def table(args: argparse.Namespace) -> ProbeTable:
    peers = peer_init(args)
    rows = {row: standard_row(row, args.scale, peers, args.uplift_weights, args.lift_weights, train_args(args))
            for row in args.rows}
    return ProbeTable(1, "Table 1, reproduced", {row: ROWS[row][0] for row in args.rows},
                      [c for c in COLUMNS if c.key in args.datasets], lambda row, column: rows[row], PAPER,
                      stats=("params", "ms"))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, 1, trains=True)
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS),
                        help="rows to compute (default: the paper's Table 1; loftup-timm is Table 5's other LoftUp)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--uplift-weights", default=None, help="UPLiFT row: release name, save_pretrained dir or .ckpt "
                        "(default: the released dinov2-s14; SCALE=tiny: a tiny UPLiFT trained once)")
    parser.add_argument("--lift-weights", default=None, help="LiFT rows: a trained LiFT (.ckpt or save_lift folder); "
                        "default: trained once with configs/lift_dinov2_s14.yaml into <results>/models/ (see --imagenet)")
    add_peer_options(parser)
    args, extra = parser.parse_known_args(argv)  # the rest goes to every `uplift fit/test`, e.g. --data.init_args.root
    return run_table(Runner(args.scale, args.results, extra), table(args))


if __name__ == "__main__":
    sys.exit(main())
