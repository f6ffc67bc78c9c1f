"""``make reproduce-table5``: LoftUp with its original DINOv2-S/14 and with the timm one, beside UPLiFT (paper Table 5).

LoftUp was trained on the original DINOv2 release (``facebookresearch/dinov2``); the other methods use timm's
copy of the same weights from the Hugging Face hub, whose 448x448 features differ a little (position embeddings
resampled differently: :class:`uplift.backbones.OriginalDINOv2Backbone`). The paper probes LoftUp on both
(appendix A). Rows: ``loftup`` (``backbone: original``, Table 1's LoftUp), ``loftup-timm`` (``backbone: task``)
and ``uplift``, on Table 1's datasets and columns. Every cell is Table 1's cell of the same row (one shared
cache, :mod:`tasks.tables.probes`): after ``make reproduce-table1`` only ``loftup-timm`` is new.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from tasks.tables.probes import (DATASETS, Column, ProbeTable, Runner, add_common_options, add_peer_options, peer_init,
                                 run_table, standard_row)
from tasks.tables.table1 import PAPER as TABLE1

ROWS = {"loftup": "LoftUp + Orig Backbone", "loftup-timm": "LoftUp + HF (timm) Backbone", "uplift": "UPLiFT"}
#: The paper's Table 5 (its rows are Table 1's LoftUp and UPLiFT rows, and the timm LoftUp).
PAPER = {row: TABLE1[row] for row in ROWS}
COLUMNS = [Column(ds, ds) for ds in DATASETS]
NOTES = ["Both LoftUp rows use LoftUp's released model; they differ only in which copy of DINOv2-S/14 feeds it and "
         "the probe: the original release (torch.hub facebookresearch/dinov2, which LoftUp was trained on) or timm's "
         "from the Hugging Face hub (vit_small_patch14_dinov2.lvd142m, as every other row)."]


def table(args: argparse.Namespace) -> ProbeTable:
    peers = peer_init(args)
    rows = {row: standard_row(row, args.scale, peers, args.uplift_weights) for row in args.rows}
    return ProbeTable(5, "Table 5, reproduced: LoftUp with its original or the timm DINOv2-S/14",
                      {row: ROWS[row] for row in args.rows}, [c for c in COLUMNS if c.key in args.datasets],
                      lambda row, column: rows[row], PAPER, stats=("params", "ms"), notes=NOTES)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, 5)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--uplift-weights", default=None, help="UPLiFT row: release name, save_pretrained dir or .ckpt "
                        "(default: the released dinov2-s14; SCALE=tiny: the tiny UPLiFT every tiny table shares)")
    add_peer_options(parser, jafar=False)
    args, extra = parser.parse_known_args(argv)  # the rest goes to every `uplift fit/test`, e.g. --data.init_args.root
    return run_table(Runner(args.scale, args.results, extra), table(args))


if __name__ == "__main__":
    sys.exit(main())
