"""Peak extra memory of one call, and the CSV writer, for the benchmark scripts of this folder.

On CUDA the caching allocator keeps statistics: ``max_memory_allocated()`` after
``reset_peak_memory_stats()``, minus ``memory_allocated()`` before the call. On CPU torch keeps no
such statistics, so we read the operating system's resident-set size (RSS) instead, in a process that
measures one call: the high-water mark only ever grows, so the caller runs each measurement in a fresh
interpreter. It resets the mark (``/proc/self/clear_refs``), records the current RSS
(``/proc/self/statm``), runs the call and reports ``high-water mark - RSS before``. The mark is
``VmHWM`` from ``/proc/self/status``, not ``getrusage(RUSAGE_SELF).ru_maxrss``: the kernel carries
``ru_maxrss`` across ``exec`` from the spawning process (Python spawns with ``vfork``), so in a child
it reports the *parent's* peak, whatever the child does. :func:`calibrate` allocates a known 400 MB
tensor, so a run checks the method itself. Its resolution is about 0.1 MB (buffers below that are
served from malloc's already resident heap).
"""

from __future__ import annotations

import csv
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["CALIBRATION_BYTES", "calibrate", "peak_extra_bytes", "rss_bytes", "write_csv", "write_results"]

CALIBRATION_BYTES = 400_000_000


def rss_bytes() -> int:
    """Current resident-set size (second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's own RSS high-water mark: ``VmHWM`` from /proc/self/status (see the module doc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; see above


def _reset_peak_rss() -> bool:
    """Lower the high-water mark to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(run: Callable[[], object], device: str = "cpu") -> dict:
    """``{"extra": bytes, "floor": bytes, "reset": bool}`` for one ``run()``: its peak memory beyond what
    was allocated before (its result included). ``floor`` > 0 means the CPU mark could not be reset."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = run()
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - before
        del out
        return {"extra": extra, "floor": 0, "reset": True}
    reset = _reset_peak_rss()
    before = rss_bytes()
    floor = _peak_rss_bytes() - before  # ~0 unless the mark could not be reset
    out = run()  # kept alive until the high-water mark is read
    extra = _peak_rss_bytes() - before
    del out
    return {"extra": max(extra, 0), "floor": floor, "reset": reset}


def calibrate() -> dict:
    """The CPU probe on a known allocation (to be run in a fresh process): ``extra`` should read 400 MB."""
    return peak_extra_bytes(lambda: torch.ones(CALIBRATION_BYTES // 4))


def write_csv(rows: list[dict], path: Path) -> None:
    """One row per measurement, floats with 6 significant digits."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def write_results(rows: list[dict], out: Path, stem: str, plot: Callable[[list[dict], Path], None], start: float) -> None:
    """``out/stem.csv`` and ``out/stem.png`` (drawn by ``plot(rows, path)``), then where they are and the run's time."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / f"{stem}.csv", out / f"{stem}.png"
    write_csv(rows, csv_path)
    plot(rows, png_path)
    print(f"\nTotal {time.perf_counter() - start:.1f} s. Wrote:\n  {csv_path}\n  {png_path}")
