"""The benchmark scripts run end to end (their --quick smoke mode): every method measured, a CSV and a plot written.
Nothing here times anything: speed is claimed from the scripts' own output, never from a test."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (table,) = out.glob("*_quick.csv")
    assert table.with_suffix(".png").is_file()
    return list(csv.DictReader(table.open()))


def test_scaling_measures_every_method_at_every_size(tmp_path: Path) -> None:
    rows = _run("scaling.py", tmp_path, "--methods", "bilinear", "fast", "tiled")
    assert {(r["method"], r["side"]) for r in rows} == {(m, s) for m in ("bilinear", "fast", "tiled") for s in ("32", "64")}
    assert all(float(r["time_s"]) > 0 and float(r["peak_extra_gib"]) >= 0 for r in rows)


def test_local_attender_measures_every_kernel(tmp_path: Path) -> None:
    rows = _run("local_attender.py", tmp_path)
    assert {"bands", "offsets", "naive", "bilinear"} <= {r["method"] for r in rows}
