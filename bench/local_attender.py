"""Benchmark the Local Attender's pooling step: time and peak extra memory against the output size.

For each low-resolution side ``S`` it builds one value map ``[1, C, S, S]`` and softmaxed attention
weights ``[1, n, I*S, I*S]`` and measures, side by side in one run:

* ``ours``     -- :func:`uplift.attender.local_attend`: accumulates one offset at a time into the
                  output, so it never holds more than the output (plus a padded copy of the value);
* ``naive``    -- :func:`uplift.attender.local_attend_reference`: stacks the ``n`` shifted copies and
                  broadcasts, materialising ``[1, C, n, S, I, S, I]`` (``n`` times the output);
* ``bilinear`` -- ``F.interpolate(value, scale_factor=I, mode="bilinear")``: the cost floor of any
                  upsampler that writes an output of this size.

Before measuring, it checks once per size that ``ours`` and ``naive`` agree (``torch.allclose``).

How to read it
--------------
``time`` is the median wall time over ``--repeats`` calls after warm-up (CUDA is synchronised).
``peak extra`` is the memory allocated by one call beyond its inputs, including the returned output;
``x out`` divides it by the output's size. Ours should sit near 1x the output (the output itself plus
the padded value, ``(S + 2r)^2 / (I*S)^2`` of the output), whatever ``S`` is; the naive one at about
``n + n/I^2 + 1`` times the output (the ``n``-fold product, the stacked shifts and the sum); bilinear
at exactly 1x. The attention weights (``weights MB``) are an input and are not copied by either method.
Both ``ours`` and ``naive`` do ``O(n)`` work per output element, so their time ratio shows the cost of
the naive version's memory traffic, and ``ours/bilinear`` what the ``n``-tap pooling costs over the floor.

Why peak memory is measured in a child process on CPU
-----------------------------------------------------
On CUDA the caching allocator keeps statistics: ``max_memory_allocated()`` after
``reset_peak_memory_stats()``, minus ``memory_allocated()`` before the call. On CPU torch keeps no
such statistics, so we read the operating system's resident-set size (RSS) instead. A process's RSS
high-water mark only ever grows, and the parent has already run every method at every size while
timing; so each (method, size) runs once in a fresh interpreter (this script with a hidden
``--_probe`` flag) that warms the method up on a tiny input, builds the inputs, resets the mark
(``/proc/self/clear_refs``), records the current RSS (``/proc/self/statm``), runs the method once
and reports ``high-water mark - RSS before``. The mark is ``VmHWM`` from ``/proc/self/status``, not
``getrusage(RUSAGE_SELF).ru_maxrss``: the kernel carries ``ru_maxrss`` across ``exec`` from the
spawning process (Python spawns with ``vfork``), so in a child of this benchmark it reports the
*parent's* peak (over 1 GB after timing the naive method), whatever the child does. A calibration
probe that allocates a known 400 MB tensor is run first and printed, so the method checks itself.
Its resolution is about 0.1 MB: buffers smaller than that are served from malloc's already
resident heap and read as 0 (as in the ``--quick`` run), so read the CPU memory columns for S >= 16.

Usage::

    python bench/local_attender.py                      # CPU defaults, about a minute on 2 cores
    python bench/local_attender.py --device cuda --dtype bfloat16
    python bench/local_attender.py --quick --out /tmp/bench   # tiny smoke run (tests)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import uplift  # noqa: F401
except ImportError:  # run from a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uplift.attender import NEIGHBOURHOODS, local_attend, local_attend_reference

METHODS = ("ours", "naive", "bilinear")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # rtol = atol for the ours-vs-naive check
MB = 1e6
CALIBRATION_BYTES = 400_000_000


# --------------------------------------------------------------------------------------------------
# Inputs and methods


def make_inputs(size: int, args: argparse.Namespace, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Value ``[1, C, S, S]`` and softmaxed weights ``[1, n, I*S, I*S]``, seeded by ``S``."""
    g = torch.Generator().manual_seed(size)
    dtype, side = DTYPES[args.dtype], size * args.scale
    value = torch.randn(1, args.channels, size, size, generator=g).to(device, dtype)
    weights = torch.randn(1, args.neighbourhood, side, side, generator=g).softmax(dim=1).to(device, dtype)
    return value, weights


def method_fn(name: str, args: argparse.Namespace) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    offsets = NEIGHBOURHOODS[args.neighbourhood]
    if name == "ours":
        return lambda value, weights: local_attend(weights, value, offsets)
    if name == "naive":
        return lambda value, weights: local_attend_reference(weights, value, offsets)
    if name == "bilinear":
        return lambda value, weights: F.interpolate(
            value, scale_factor=args.scale, mode="bilinear", align_corners=False
        )
    raise ValueError(f"unknown method {name!r}")


def check_agreement(value: torch.Tensor, weights: torch.Tensor, args: argparse.Namespace) -> None:
    """Refuse to benchmark code that is wrong: ours must equal the naive oracle."""
    ours = method_fn("ours", args)(value, weights)
    naive = method_fn("naive", args)(value, weights)
    tol = TOLERANCE[value.dtype]
    if not torch.allclose(ours, naive, rtol=tol, atol=tol):
        err = (ours.float() - naive.float()).abs().max().item()
        raise AssertionError(f"local_attend and local_attend_reference disagree (max abs error {err:.3g})")


# --------------------------------------------------------------------------------------------------
# Measurements


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure_time(fn: Callable, value: torch.Tensor, weights: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median wall time in seconds of ``fn(value, weights)`` over ``repeats`` calls after ``warmup``."""
    device = str(value.device)
    for _ in range(warmup):
        fn(value, weights)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(value, weights)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_bytes() -> int:
    """Current resident-set size (second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's own RSS high-water mark: ``VmHWM`` from /proc/self/status.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: that is the larger of this mark and a value the kernel
    carries across ``exec`` from the process that spawned us (with ``vfork``, the parent's own peak),
    so in a child of this benchmark it reads the parent's peak, not the child's, and cannot be reset.
    """
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


def _probe(spec: dict) -> dict:
    """Child-process side of :func:`measure_memory`: one call, RSS high-water mark minus RSS before."""
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["args"])
    if spec["method"] == "calibration":
        run = lambda: torch.ones(CALIBRATION_BYTES // 4)  # noqa: E731  (touches every page)
    else:
        fn = method_fn(spec["method"], args)
        fn(*make_inputs(2, args, "cpu"))  # warm-up: thread pool, lazy kernels, allocator arenas
        value, weights = make_inputs(spec["size"], args, "cpu")
        run = lambda: fn(value, weights)  # noqa: E731
    reset = _reset_peak_rss()
    before = _rss_bytes()
    floor = _peak_rss_bytes() - before  # ~0 unless the mark could not be reset
    out = run()  # kept alive until the high-water mark is read
    extra = _peak_rss_bytes() - before
    del out
    return {"extra": max(extra, 0), "reset": reset, "floor": floor}


def measure_memory(method: str, size: int, args: argparse.Namespace, device: str) -> int:
    """Peak extra bytes of one call beyond its inputs (output included); see the module docstring."""
    if device.startswith("cuda"):
        value, weights = make_inputs(size, args, device)
        fn = method_fn(method, args)
        fn(value, weights)  # warm-up outside the measured window
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn(value, weights)
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - before
        del out, value, weights
        return extra
    spec = {"method": method, "size": size, "args": vars(args), "threads": torch.get_num_threads()}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_probe", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {method} at S={size} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["floor"] > 16 * 2**20:
        print(
            f"warning: {method} at S={size} may read low: the RSS high-water mark was already "
            f"{result['floor'] / MB:.0f} MB above the RSS before the call (reset: {result['reset']})",
            file=sys.stderr,
        )
    return result["extra"]


def run_benchmark(args: argparse.Namespace) -> list[dict]:
    """One row per (size, method): time, peak extra memory and their ratios."""
    device, rows = args.device, []
    if not device.startswith("cuda"):
        calibration = measure_memory("calibration", 0, args, device)
        print(
            f"CPU memory probe calibration: allocated {CALIBRATION_BYTES / MB:.0f} MB, "
            f"measured {calibration / MB:.1f} MB"
        )
    warmup = 3 if device.startswith("cuda") else 1
    for size in args.sizes:
        value, weights = make_inputs(size, args, device)
        check_agreement(value, weights, args)
        side = size * args.scale
        out_bytes = args.channels * side * side * value.element_size()
        weights_bytes = weights.numel() * weights.element_size()
        times = {m: measure_time(method_fn(m, args), value, weights, args.repeats, warmup) for m in METHODS}
        del value, weights
        for m in METHODS:
            extra = measure_memory(m, size, args, device)
            rows.append({
                "device": device, "dtype": args.dtype, "channels": args.channels,
                "neighbourhood": args.neighbourhood, "scale": args.scale, "size": size,
                "out_side": side, "out_tokens": side * side, "method": m,
                "time_ms": times[m] * 1e3, "peak_extra_mb": extra / MB,
                "output_mb": out_bytes / MB, "weights_mb": weights_bytes / MB,
                "peak_over_output": extra / out_bytes,
                "time_ours_over_naive": times["ours"] / times["naive"],
                "time_ours_over_bilinear": times["ours"] / times["bilinear"],
            })  # fmt: skip
        print(f"  S={size:>4} done", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# Reporting


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Two tables, one row per size: median times with ratios, and peak extra memory with x output."""
    by_size: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_size.setdefault(r["size"], {})[r["method"]] = r
    print(
        f"\nLocal Attender pooling on {args.device} ({args.dtype}): C={args.channels}, "
        f"n={args.neighbourhood}, I={args.scale}, batch 1; median of {args.repeats} runs"
    )
    print(
        f"\n{'S':>5} {'out':>6} {'tokens':>9} | {'ours ms':>9} {'naive ms':>9} {'bilin ms':>9}"
        f" | {'ours/naive':>10} {'ours/bilin':>10}"
    )
    for size, r in by_size.items():
        o = r["ours"]
        print(
            f"{size:>5} {o['out_side']:>6} {o['out_tokens']:>9} | {o['time_ms']:>9.2f} "
            f"{r['naive']['time_ms']:>9.2f} {r['bilinear']['time_ms']:>9.2f} | "
            f"{o['time_ours_over_naive']:>10.2f} {o['time_ours_over_bilinear']:>10.2f}"
        )
    print("\nPeak extra memory beyond the inputs, MB (x output size)")
    print(f"{'S':>5} {'out MB':>9} {'weights MB':>10} | {'ours':>17} {'naive':>17} {'bilinear':>17}")
    for size, r in by_size.items():
        cells = " ".join(f"{r[m]['peak_extra_mb']:>9.2f} ({r[m]['peak_over_output']:>4.1f}x)" for m in METHODS)
        print(f"{size:>5} {r['ours']['output_mb']:>9.2f} {r['ours']['weights_mb']:>10.2f} | {cells}")


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def plot(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    """Time and peak extra memory against output tokens, log-log, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.5))
    for m, marker in zip(METHODS, "osd"):
        pts = [r for r in rows if r["method"] == m]
        tokens = [r["out_tokens"] for r in pts]
        ax_time.plot(tokens, [r["time_ms"] for r in pts], marker=marker, label=m)
        ax_mem.plot(tokens, [r["peak_extra_mb"] for r in pts], marker=marker, label=m)
    outputs = [r for r in rows if r["method"] == "ours"]
    ax_mem.plot(
        [r["out_tokens"] for r in outputs], [r["output_mb"] for r in outputs],
        color="grey", linestyle=":", label="output size",
    )  # fmt: skip
    for ax, ylabel in ((ax_time, "median time (ms)"), (ax_mem, "peak extra memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("output tokens (I*S)^2")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_time.set_title("Time")
    ax_mem.set_title("Peak extra memory beyond inputs")
    fig.suptitle(
        f"Local Attender pooling, {args.device} {args.dtype}: C={args.channels}, "
        f"n={args.neighbourhood}, I={args.scale}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="cuda if available, else cpu")
    p.add_argument("--channels", type=int, default=384, help="value channels C (default 384)")
    p.add_argument("--neighbourhood", type=int, default=17, choices=sorted(NEIGHBOURHOODS), help="n (default 17)")
    p.add_argument("--scale", type=int, default=2, help="upsampling factor I (default 2)")
    p.add_argument(
        "--sizes", type=int, nargs="+",
        help="low-res sides S (default 16 32 64 96 on CPU, 32 64 128 256 on CUDA)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, help="timed calls per method and size (default 5 CPU, 20 CUDA)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: C=16, S in {4, 8}, 2 repeats")
    p.add_argument("--_probe", help=argparse.SUPPRESS)  # child process of the CPU memory measurement
    args = p.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    if args.quick:
        args.channels, args.sizes, args.repeats = 16, args.sizes or [4, 8], args.repeats or 2
    args.sizes = args.sizes or ([32, 64, 128, 256] if on_cuda else [16, 32, 64, 96])
    args.repeats = args.repeats or (20 if on_cuda else 5)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._probe:
        print(json.dumps(_probe(json.loads(args._probe))))
        return
    spec = {k: v for k, v in vars(args).items() if k not in ("out", "quick", "_probe")}
    start = time.perf_counter()
    rows = run_benchmark(argparse.Namespace(**spec))
    print_table(rows, args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"local_attender_{args.device.split(':')[0]}_{args.dtype}" + ("_quick" if args.quick else "")
    csv_path, png_path = args.out / f"{stem}.csv", args.out / f"{stem}.png"
    write_csv(rows, csv_path)
    plot(rows, args, png_path)
    print(f"\nTotal {time.perf_counter() - start:.1f} s. Wrote:\n  {csv_path}\n  {png_path}")


if __name__ == "__main__":
    main()
