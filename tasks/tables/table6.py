"""``make reproduce-table6``: UPLiFT trained with each set of training depths, probed on COCO-Stuff and VOC (paper
Table 6, appendix C.1).

One UPLiFT per depth set D in {1}, {2}, {3}, {4}, {1,2}, {1,2,3}, {1,2,3,4}: the release's DINOv2-S/14 recipe
(``configs/dinov2_s14.yaml``: ImageNet-1k, one epoch, 448 px) with ``--model.init_args.depths=[...]``, then a
segmentation probe on each dataset. Trained models and cells live in the caches every table shares
(:mod:`tasks.tables.probes`): the D = {1,2,3} model is Table 7's n = 17 model, trained once for both.

``--scale tiny`` trains each model for a few steps on the bundled photos at 224 px (the smallest size that depth
4 halves four times into whole 14-px patches) with the tiny random ViT: a pipeline test, meaningless numbers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from tasks.tables.probes import (Column, ProbeTable, Row, Runner, add_common_options, run_table, train_args,
                                 uplift_model)

DEPTHS = {"1": (1,), "2": (2,), "3": (3,), "4": (4,), "1,2": (1, 2), "1,2,3": (1, 2, 3), "1,2,3,4": (1, 2, 3, 4)}
#: The paper's Table 6: depth set -> {dataset: (mIoU, Acc)}
PAPER = {
    "1": {"coco": (62.26, 81.34), "voc": (85.03, 96.42)},
    "2": {"coco": (62.34, 81.43), "voc": (84.89, 96.40)},
    "3": {"coco": (62.24, 81.34), "voc": (84.67, 96.33)},
    "4": {"coco": (60.82, 80.30), "voc": (81.42, 95.42)},
    "1,2": {"coco": (62.46, 81.50), "voc": (85.04, 96.44)},
    "1,2,3": {"coco": (62.55, 81.57), "voc": (85.21, 96.51)},
    "1,2,3,4": {"coco": (62.36, 81.45), "voc": (84.97, 96.42)},
}
COLUMNS = [Column("coco", "coco"), Column("voc", "voc")]


def label(depths: str) -> str:
    values = DEPTHS[depths]
    return f"d = {values[0]}" if len(values) == 1 else "d ∈ {" + ", ".join(map(str, values)) + "}"


def table(args: argparse.Namespace) -> ProbeTable:
    models = {d: uplift_model(args.scale, depths=DEPTHS[d], train_args=train_args(args)) for d in args.depths}
    return ProbeTable(6, "Table 6, reproduced: training depths", {d: label(d) for d in args.depths},
                      [c for c in COLUMNS if c.key in args.datasets],
                      lambda d, column: Row("uplift.upsamplers.UPLiFTUpsampler", model=models[d]), PAPER,
                      notes=["Every row: UPLiFT trained with the release's DINOv2-S/14 recipe (n = 17) and these training "
                             "depths, then probed as in Table 1."], method="Depth")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, 6, trains=True)
    parser.add_argument("--depths", nargs="+", default=list(DEPTHS), choices=list(DEPTHS),
                        help="depth sets to train and probe (default: all of the paper's)")
    parser.add_argument("--datasets", nargs="+", default=[c.key for c in COLUMNS], choices=[c.key for c in COLUMNS])
    args, extra = parser.parse_known_args(argv)  # the rest goes to every probe's `uplift fit/test`
    return run_table(Runner(args.scale, args.results, extra), table(args))


if __name__ == "__main__":
    sys.exit(main())
