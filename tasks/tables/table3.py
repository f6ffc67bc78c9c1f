"""``make reproduce-table3``: Stable Diffusion 1.5 512 -> UPLiFT 1024 on 5k reLAION-400M prompts, beside the paper's
Table 3: the driver of :mod:`tasks.tables.table2` with ``configs/t2i_relaion.yaml`` and 25 and 40 diffusion steps
(the paper's latency protocol at batch 1). Results: ``<results>/table3.md`` and ``.csv``.

    python -m tasks.tables.table3 --captions /data/relaion/prompts.parquet --images /data/relaion/images
    python -m tasks.tables.table3 --scale tiny      # pipeline test: MEANINGLESS numbers

The paper samples 5k reLAION-400M image-text pairs whose images are at least 1024x1024: the prompts file holds their
captions (``.txt`` one a line, or ``.csv``/``.tsv``/``.parquet``/``.jsonl`` with a ``caption`` column), the folder
their images (FID's references).
"""

from __future__ import annotations

import sys
from typing import Optional

from tasks.tables.table2 import Spec
from tasks.tables.table2 import main as _table_main

#: The paper's Table 3: (model, steps, method, params M, resolution, s/img, CLIP, FID, p-FID).
PAPER: list[tuple] = [
    ("SD1.5", 25, "-", None, "512", 1.27, 31.67, 22.32, None),
    ("SD1.5", 40, "-", None, "512", 1.96, 31.87, 21.90, None),
    ("SD1.5", "*", "CFM-4", 306, "512 → 1024", 2.72, 26.16, 21.61, 15.83),
    ("SD1.5", "*", "CFM-40", 306, "512 → 1024", 3.16, 26.14, 21.67, 15.96),
    ("SD1.5", 25, "UPLiFT", 53, "512 → 1024", 1.56, 31.00, 21.17, 16.10),
    ("SD1.5", 40, "UPLiFT", 53, "512 → 1024", 2.27, 31.17, 20.73, 15.49),
    ("LCM SDXL", 4, "-", None, "1024", 0.72, 31.06, 28.05, 24.13),
]

RELAION = Spec("table3", "Table 3, reproduced: zero-shot reLAION-400M-5k 512 → 1024", "configs/t2i_relaion.yaml",
               "tests/conf/t2i_relaion.yaml", (25, 40), (2, 3), PAPER,
               "reLAION: --captions prompts.parquet --images reference_images/", "relaion_prompts.csv")


def main(argv: Optional[list[str]] = None) -> int:
    return _table_main(argv, RELAION)


if __name__ == "__main__":
    sys.exit(main())
