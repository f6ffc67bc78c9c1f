"""Benchmark the Local Attender's pooling step: time and peak extra memory against the output size.

For each low-resolution side ``S`` it builds one value map ``[1, C, S, S]`` and softmaxed attention
weights ``[1, n, I*S, I*S]`` and measures, side by side in one run:

* ``bands``    -- the one-pass CPU kernel (:mod:`uplift.kernels.attend_cpu`), the default on CPU: row
                  bands of the low-res grid, channels last, each band's ``n`` terms accumulated while it
                  is in cache, so the output is written once;
* ``triton``   -- the Triton kernel (:mod:`uplift.kernels.attend_triton`), the default on CUDA (CUDA runs only);
* ``offsets``  -- the previous default: one fused multiply-add over the whole output per offset (``n``
                  passes over the output, channels first);
* ``naive``    -- :func:`uplift.attender.local_attend_reference`: stacks the ``n`` shifted copies and
                  broadcasts, materialising ``[1, C, n, S, I, S, I]`` (``n`` times the output);
* ``bilinear`` -- ``F.interpolate(value, scale_factor=I, mode="bilinear")``: the cost floor of any
                  upsampler that writes an output of this size.

Before measuring, it checks once per size that every method agrees with ``naive`` (``torch.allclose``).

How to read it
--------------
``time`` is the median wall time over ``--repeats`` calls after warm-up (``torch.utils.benchmark.Timer``,
which synchronises CUDA). ``peak extra`` is the memory allocated by one call beyond its inputs,
including the returned output; ``x out`` divides it by the output's size. The one-pass kernels sit near
1x the output (plus the padded value, ``(S + 2r)^2 / (I*S)^2`` of it, and a channels-last copy of the
value), whatever ``S`` is; the naive one at about ``n + n/I^2 + 1`` times the output; bilinear at 1x.
The attention weights (``weights MB``) are an input. All do ``O(n)`` work per output element, so the
time ratios show the cost of memory traffic, and ``x bilinear`` what the ``n``-tap pooling costs over
the floor. CPU peak memory is measured in a fresh child process per measurement (``bench/probe.py``
explains how and why); read the CPU memory columns for S >= 16.

Usage::

    python bench/local_attender.py                      # CPU defaults, about a minute on 2 cores
    python bench/local_attender.py --device cuda --dtype bfloat16
    python bench/local_attender.py --quick --out /tmp/bench   # tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

try:
    import uplift  # noqa: F401
except ImportError:  # run from a checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe import CALIBRATION_BYTES, calibrate, peak_extra_bytes, write_results  # bench/probe.py (this script's folder)

from uplift.attender import NEIGHBOURHOODS, local_attend

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # rtol = atol for the check against naive
MB = 1e6


# --------------------------------------------------------------------------------------------------
# Inputs and methods


def make_inputs(size: int, args: argparse.Namespace, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Value ``[1, C, S, S]`` and softmaxed weights ``[1, n, I*S, I*S]``, seeded by ``S``."""
    g = torch.Generator().manual_seed(size)
    dtype, side = DTYPES[args.dtype], size * args.scale
    value = torch.randn(1, args.channels, size, size, generator=g).to(device, dtype)
    weights = torch.randn(1, args.neighbourhood, side, side, generator=g).softmax(dim=1).to(device, dtype)
    return value, weights


def methods(device: str) -> tuple[str, ...]:
    return ("bands", "triton", "offsets", "naive", "bilinear") if device.startswith("cuda") else (
        "bands", "offsets", "naive", "bilinear")


def method_fn(name: str, args: argparse.Namespace) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    offsets = NEIGHBOURHOODS[args.neighbourhood]
    impl = {"bands": "bands", "triton": "triton", "offsets": "offsets", "naive": "reference"}.get(name)
    if impl is not None:
        return lambda value, weights: local_attend(weights, value, offsets, impl=impl)
    if name == "bilinear":
        return lambda value, weights: F.interpolate(
            value, scale_factor=args.scale, mode="bilinear", align_corners=False
        )
    raise ValueError(f"unknown method {name!r}")


def check_agreement(value: torch.Tensor, weights: torch.Tensor, args: argparse.Namespace) -> None:
    """Refuse to benchmark code that is wrong: every implementation must equal the naive oracle."""
    naive = method_fn("naive", args)(value, weights)
    tol = TOLERANCE[value.dtype]
    for name in methods(args.device):
        if name in ("naive", "bilinear"):
            continue
        out = method_fn(name, args)(value, weights)
        if not torch.allclose(out, naive, rtol=tol, atol=tol):
            err = (out.float() - naive.float()).abs().max().item()
            raise AssertionError(f"{name} and the naive formulation disagree (max abs error {err:.3g})")


# --------------------------------------------------------------------------------------------------
# Measurements


def measure_time(fn: Callable, value: torch.Tensor, weights: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median wall time in seconds of ``fn(value, weights)`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn(value, weights)
    timer = Timer("fn(value, weights)", globals={"fn": fn, "value": value, "weights": weights},
                  num_threads=torch.get_num_threads())
    return statistics.median(timer.timeit(1).mean for _ in range(repeats))


def _probe(spec: dict) -> dict:
    """Child-process side of :func:`measure_memory`: one call, RSS high-water mark minus RSS before."""
    torch.set_num_threads(spec["threads"])
    if spec["method"] == "calibration":
        return calibrate()
    args = argparse.Namespace(**spec["args"])
    fn = method_fn(spec["method"], args)
    fn(*make_inputs(2, args, "cpu"))  # warm-up: thread pool, lazy kernels, allocator arenas
    value, weights = make_inputs(spec["size"], args, "cpu")
    return peak_extra_bytes(lambda: fn(value, weights))


def measure_memory(method: str, size: int, args: argparse.Namespace, device: str) -> int:
    """Peak extra bytes of one call beyond its inputs (output included); see bench/probe.py."""
    if device.startswith("cuda"):
        value, weights = make_inputs(size, args, device)
        fn = method_fn(method, args)
        fn(value, weights)  # warm-up outside the measured window
        return peak_extra_bytes(lambda: fn(value, weights), device)["extra"]
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
    device, rows, names = args.device, [], methods(args.device)
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
        times = {m: measure_time(method_fn(m, args), value, weights, args.repeats, warmup) for m in names}
        del value, weights
        for m in names:
            extra = measure_memory(m, size, args, device)
            rows.append({
                "device": device, "dtype": args.dtype, "channels": args.channels,
                "neighbourhood": args.neighbourhood, "scale": args.scale, "size": size,
                "out_side": side, "out_tokens": side * side, "method": m,
                "time_ms": times[m] * 1e3, "peak_extra_mb": extra / MB,
                "output_mb": out_bytes / MB, "weights_mb": weights_bytes / MB,
                "peak_over_output": extra / out_bytes,
                "time_over_offsets": times[m] / times["offsets"],
                "time_over_bilinear": times[m] / times["bilinear"],
            })  # fmt: skip
        print(f"  S={size:>4} done", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# Reporting


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Two tables, one row per size: median times with ratios, and peak extra memory with x output."""
    names = methods(args.device)
    by_size: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_size.setdefault(r["size"], {})[r["method"]] = r
    print(
        f"\nLocal Attender pooling on {args.device} ({args.dtype}): C={args.channels}, "
        f"n={args.neighbourhood}, I={args.scale}, batch 1; median of {args.repeats} runs, {torch.get_num_threads()} threads"
    )
    print(f"\n{'S':>5} {'out':>6} {'tokens':>9} | " + " ".join(f"{m + ' ms':>10}" for m in names)
          + f" | {'bands/offsets':>13} {'bands/bilin':>11}")
    for size, r in by_size.items():
        o = r["bands"]
        print(f"{size:>5} {o['out_side']:>6} {o['out_tokens']:>9} | " + " ".join(f"{r[m]['time_ms']:>10.2f}" for m in names)
              + f" | {o['time_over_offsets']:>13.2f} {o['time_over_bilinear']:>11.2f}")
    print("\nPeak extra memory beyond the inputs, MB (x output size)")
    print(f"{'S':>5} {'out MB':>9} {'weights MB':>10} | " + " ".join(f"{m:>17}" for m in names))
    for size, r in by_size.items():
        cells = " ".join(f"{r[m]['peak_extra_mb']:>9.2f} ({r[m]['peak_over_output']:>4.1f}x)" for m in names)
        print(f"{size:>5} {r['bands']['output_mb']:>9.2f} {r['bands']['weights_mb']:>10.2f} | {cells}")


def plot(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    """Time and peak extra memory against output tokens, log-log, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.5))
    for m, marker in zip(methods(args.device), "osdv^"):
        pts = [r for r in rows if r["method"] == m]
        tokens = [r["out_tokens"] for r in pts]
        ax_time.plot(tokens, [r["time_ms"] for r in pts], marker=marker, label=m)
        ax_mem.plot(tokens, [r["peak_extra_mb"] for r in pts], marker=marker, label=m)
    outputs = [r for r in rows if r["method"] == "bands"]
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
        help="low-res sides S (default 16 32 64 128 on CPU, 32 64 128 256 on CUDA)",
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
    args.sizes = args.sizes or ([32, 64, 128, 256] if on_cuda else [16, 32, 64, 128])
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
    stem = f"local_attender_{args.device.split(':')[0]}_{args.dtype}" + ("_quick" if args.quick else "")
    write_results(rows, args.out, stem, lambda r, path: plot(r, args, path), start)


if __name__ == "__main__":
    main()
