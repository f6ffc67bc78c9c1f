"""``make reproduce-table8``: segmentation with DINOv3-S+/16 against DINOv2-S/14, COCO-Stuff and VOC (paper Table 8,
appendix D.1).

Rows: JAFAR (its released DINOv2-S/14 and DINOv3-S+/16 models), AnyUp (one backbone-agnostic model, the same
weights on both backbones) and UPLiFT (the released ``dinov2-s14`` and ``dinov3-splus16``). LoftUp has no DINOv3
model (the paper says so), so it has no row. The DINOv3 columns run the same probe configs with
``--model.init_args.backbone.name=vit_small_plus_patch16_dinov3.lvd1689m`` (448 px images and features: a multiple
of both patch sizes). The DINOv2 cells are Table 1's cells of the same rows (one shared cache,
:mod:`tasks.tables.probes`).

``--scale tiny``: tiny random ViTs of both kinds (56 px for patch 14, 64 px for patch 16) and a tiny UPLiFT trained
for each (the DINOv2 one is the one every tiny table shares): a pipeline test, meaningless numbers.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Optional

from tasks.tables.probes import DATASETS as PROBES
from tasks.tables.probes import (DINOV2, DINOV3, Column, ProbeTable, Row, Runner, add_common_options, add_peer_options,
                                 peer_init, run_table, standard_row, uplift_model)

#: JAFAR's DINOv3-S+/16 model: listed in JAFAR's hubconf.py after 94d4d54 (whose README lists only older backbones),
#: built as the DINOv2-S/14 one (qk_dim 128, 4 heads, v_dim = feature_dim = 384: `vit_small` names give 384).
JAFAR_DINOV3_SPLUS16 = ("https://github.com/PaulCouairon/JAFAR/releases/download/Weights/"
                        "vit_small_plus_patch16_dinov3.lvd1689m.pth")
METHODS = {"jafar": "JAFAR", "anyup": "AnyUp", "uplift": "UPLiFT"}
BACKBONES = {"dinov2": DINOV2, "dinov3": DINOV3}
DATASETS = ("coco", "voc")
#: The paper's Table 8: method -> {"<backbone>:<dataset>": (mIoU, Acc), "params": M}; AnyUp's row is adapted from
#: the AnyUp paper, which has no DINOv3 VOC numbers.
PAPER = {
    "jafar": {"params": 0.7, "dinov2:coco": (61.71, 81.01), "dinov2:voc": (84.38, 96.22),
              "dinov3:coco": (62.47, 81.50), "dinov3:voc": (83.05, 95.99)},
    "anyup": {"params": 0.9, "dinov2:coco": (62.16, 81.37), "dinov2:voc": (84.00, 96.19),
              "dinov3:coco": (62.99, 81.84), "dinov3:voc": (None, None)},
    "uplift": {"params": 0.8, "dinov2:coco": (62.55, 81.57), "dinov2:voc": (85.21, 96.51),
               "dinov3:coco": (63.74, 82.27), "dinov3:voc": (84.72, 96.55)},
}
MARKS = {("anyup", f"{b}:{ds}", i): "†" for b in BACKBONES for ds in DATASETS for i in (0, 1)}
NOTES = ["Params: of the DINOv2-S/14 model (the first available column). The DINOv3 columns probe "
         "vit_small_plus_patch16_dinov3.lvd1689m (timm) at 448 px (SCALE=tiny: a tiny random one at 64 px).",
         "",
         "† The paper's AnyUp row is adapted from the AnyUp paper (its own Table 1 AnyUp run on DINOv2-S/14 gives "
         "62.08 / 81.31 / 84.33 / 96.23); that paper reports no DINOv3 VOC numbers. Ours: AnyUp's one released model "
         "on both backbones.",
         f"JAFAR on DINOv3-S+/16: its released weights {JAFAR_DINOV3_SPLUS16}."]


def columns(backbones: list[str], datasets: list[str]) -> list[Column]:
    return [Column(f"{b}:{ds}", ds, BACKBONES[b], f"{BACKBONES[b].label} {PROBES[ds].title}")
            for b in backbones for ds in datasets]


def table(args: argparse.Namespace) -> ProbeTable:
    peers = peer_init(args)
    dinov2 = {m: standard_row(m, args.scale, peers, args.uplift_weights) for m in args.rows}

    def row(method: str, column: Column) -> Row:
        if column.backbone.default:
            return dinov2[method]  # Table 1's row: Table 1's cell
        row = replace(dinov2[method], init=dict(dinov2[method].init), backbone=column.backbone)
        if method == "jafar":
            row.init["weights"] = args.jafar_dinov3_weights or JAFAR_DINOV3_SPLUS16
        elif method == "uplift":
            row.init.pop("weights", None)
            row.model, row.name = None, "uplift"
            if args.uplift_dinov3_weights:
                row.init["weights"] = args.uplift_dinov3_weights
            elif args.scale == "tiny":  # no released weights for the toy backbone: train one once
                row.model, row.name = uplift_model(args.scale, DINOV3), ""
            else:
                row.init["weights"] = "dinov3-splus16"
        return row

    return ProbeTable(8, "Table 8, reproduced: DINOv2-S/14 vs DINOv3-S+/16", {m: METHODS[m] for m in args.rows},
                      columns(args.backbones, args.datasets), row, PAPER, stats=("params",), notes=NOTES, marks=MARKS)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, 8)
    parser.add_argument("--rows", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--uplift-weights", default=None, help="UPLiFT on DINOv2-S/14: release name, save_pretrained dir "
                        "or .ckpt (default: the released dinov2-s14; SCALE=tiny: a tiny UPLiFT trained once)")
    parser.add_argument("--uplift-dinov3-weights", default=None, help="UPLiFT on DINOv3-S+/16 (default: the released "
                        "dinov3-splus16; SCALE=tiny: a tiny UPLiFT trained once)")
    add_peer_options(parser)
    parser.add_argument("--jafar-dinov3-weights", default=None, help="JAFAR on DINOv3-S+/16: its released weights (path "
                        f"or URL; default: {JAFAR_DINOV3_SPLUS16})")
    args, extra = parser.parse_known_args(argv)  # the rest goes to every `uplift fit/test`, e.g. --data.init_args.root
    return run_table(Runner(args.scale, args.results, extra), table(args))


if __name__ == "__main__":
    sys.exit(main())
