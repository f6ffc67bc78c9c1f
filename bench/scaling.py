"""Time and peak memory of pixel-dense upsampling against the number of tokens (the paper's Figs. 1 and 9).

For each image side it builds random inputs of a released model's shapes (``--preset``: DINOv3-S+/16 by
default: C = 384, patch 16; ``dinov2-s14`` for the Table 1 setting, 448 px) and upsamples the features to
one feature per pixel with, side by side in one run:

* ``bilinear`` -- ``F.interpolate(features, size=image size, mode="bilinear")``: the floor of any upsampler;
* ``before``   -- the UPLiFT code of ``--baseline`` (a folder holding an ``uplift`` package, e.g. a checkout
                  of the main branch before the inference engine); skipped without ``--baseline``;
* ``plain``    -- ``UPLiFT`` of this checkout, as trained;
* ``fast``     -- ``model.fast()`` (:mod:`uplift.fast`);
* ``tiled``    -- ``model.fast().iter_tiles(..., tile=--tile)``, each tile consumed (reduced to its channel
                  means, as a streaming consumer would) and dropped before the next one is computed, so the
                  whole output never exists;
* peers with ``--peer jafar=PATH`` (a checkout, loaded with ``torch.hub`` ``source="local"``), or
  ``--peer anyup`` / ``--peer loftup`` (from GitHub through ``torch.hub``): optional; a peer whose code
  or weights cannot be had is reported and skipped.

Weights are random (timing does not depend on their values); the model is in eval mode under
``torch.no_grad``. Each (method, size) runs in a fresh process that warms the method up on a small
image, measures the peak extra memory of one call (RSS high-water mark on CPU, ``bench/probe.py``;
allocator statistics on CUDA), then times ``--repeats`` calls with ``torch.utils.benchmark.Timer`` and
reports their median. A method stops at the first size whose memory, extrapolated linearly in tokens
from its previous size, would pass ``--memory-cap``. The table shows time, peak extra memory and the
speed-up over ``before``; the exponents are least-squares slopes of log(time) and log(memory) against
log(tokens) over the sizes measured (1 = linear). Results: a CSV and a plot in ``--out``.

Usage::

    python bench/scaling.py                                       # p16 sweep, 256 to 16k tokens
    python bench/scaling.py --preset dinov2-s14 --sizes 448       # the Table 1 setting (448 px)
    python bench/scaling.py --baseline /tmp/uplift-before --peer jafar=/tmp/JAFAR
    python bench/scaling.py --quick --out /tmp/bench              # tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = {  # name: (torch.hub repository, entry, call convention of uplift.upsamplers.TorchHubUpsampler)
    "jafar": ("PaulCouairon/JAFAR", "jafar", "features_image"),
    "anyup": ("wimmerth/anyup", "anyup", "image_features"),
    "loftup": ("andrehuang/loftup", "loftup_dinov2s", "features_image"),
}
OURS = ("bilinear", "before", "plain", "fast", "tiled")
GIB = 2**30


# --------------------------------------------------------------------------------------------------
# Child process: one method at one size


def _build(spec: dict):
    """``(call, label)``: a no-argument function running the method once on inputs of the spec's size."""
    method, side = spec["method"], spec["size"]
    if method == "before":
        sys.path.insert(0, spec["baseline"])  # the old uplift package shadows this checkout's
    else:
        sys.path.insert(0, str(HERE.parent))
    import torch
    import torch.nn.functional as F

    import uplift
    from uplift import UPLiFT, UPLiFTConfig

    torch.manual_seed(0)
    config = UPLiFTConfig.preset(spec["preset"])
    p, c = config.patch_size, config.feature_channels
    image = torch.randn(1, 3, side, side)
    features = torch.randn(1, c, side // p, side // p)
    dense = (side // p) << config.native_steps
    output_size = None if dense == side else (side, side)
    if method == "bilinear":
        return lambda: F.interpolate(features, size=(side, side), mode="bilinear", align_corners=False), uplift.__file__
    if method in ("before", "plain", "fast", "tiled"):
        model = UPLiFT(config).eval()
        if method == "fast":
            model = model.fast()
        if method == "tiled":
            model, tile = model.fast(), spec["tile"]

            def consume():  # a streaming consumer: each tile reduced, then dropped before the next is computed
                means = []
                for _, part in model.iter_tiles(image, features, tile=tile, output_size=output_size):
                    means.append(part.mean(dim=(2, 3)))
                    del part
                return torch.stack(means)

            return consume, uplift.__file__
        return lambda: model(image, features, output_size=output_size), uplift.__file__
    from uplift.upsamplers import TorchHubUpsampler

    repo, entry, call = PEERS[method]
    source = spec["peers"].get(method)
    hub = {"source": "local"} if source and Path(source).is_dir() else {}
    peer = TorchHubUpsampler(source or repo, entry, call=call, label=method, kwargs={**hub, **spec["peer_kwargs"]})
    return lambda: peer(image, features, (side, side)), source or repo


def _probe(spec: dict) -> dict:
    import torch
    from torch.utils.benchmark import Timer

    sys.path.insert(0, str(HERE))
    from probe import calibrate, peak_extra_bytes

    if spec["method"] == "calibration":
        return calibrate()
    torch.set_num_threads(spec["threads"])
    with torch.no_grad():
        small = dict(spec, size=spec["warmup_size"])
        warm, _ = _build(small)
        warm()  # thread pool, kernels, allocator arenas, on a small image: the measured call still allocates
        del warm
        run, source = _build(spec)
        memory = peak_extra_bytes(run)
        timer = Timer("run()", globals={"run": run}, num_threads=spec["threads"])
        times = [timer.timeit(1).mean for _ in range(spec["repeats"])]
    return {"times": times, "extra": memory["extra"], "floor": memory["floor"], "source": source}


def _run_child(spec: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_probe", json.dumps(spec)],
                          capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Parent: the sweep, the table, the fit, the files


def methods_of(args: argparse.Namespace) -> list[str]:
    names = [m for m in args.methods if m != "before" or args.baseline]
    return names + [p for p in args.peers if p not in names]


def run_benchmark(args: argparse.Namespace) -> list[dict]:
    import torch

    rows: list[dict] = []
    stopped: dict[str, str] = {}
    for side in args.sizes:
        for method in methods_of(args):
            last = [r for r in rows if r["method"] == method]
            if method in stopped:
                continue
            if last:
                tokens_ratio = (side / last[-1]["side"]) ** 2
                expected = last[-1]["peak_extra_gib"] * tokens_ratio
                if expected > args.memory_cap:
                    stopped[method] = f"stopped before {side} px: ~{expected:.1f} GiB expected > cap {args.memory_cap} GiB"
                    print(f"  {method}: {stopped[method]}", flush=True)
                    continue
            spec = {"method": method, "size": side, "preset": args.preset, "tile": args.tile, "repeats": args.repeats,
                    "threads": torch.get_num_threads(), "baseline": str(args.baseline or ""),
                    "warmup_size": args.warmup_size, "peers": dict(args.peer_sources), "peer_kwargs": args.peer_kwargs}
            result = _run_child(spec, args.timeout)
            if "error" in result:
                stopped[method] = f"failed at {side} px: {result['error']}"
                print(f"  {method}: {stopped[method]}", flush=True)
                continue
            tokens = (side // args.patch) ** 2
            rows.append({"preset": args.preset, "side": side, "tokens": tokens, "method": method,
                         "time_s": statistics.median(result["times"]), "times_s": " ".join(f"{t:.4f}" for t in result["times"]),
                         "peak_extra_gib": result["extra"] / GIB, "threads": spec["threads"], "source": result["source"]})
            r = rows[-1]
            print(f"  {side:>5} px {method:>8}: {r['time_s']:8.3f} s  {r['peak_extra_gib']:7.3f} GiB", flush=True)
    for row in rows:
        before = next((r for r in rows if r["method"] == "before" and r["side"] == row["side"]), None)
        row["speedup_vs_before"] = before["time_s"] / row["time_s"] if before else float("nan")
    args.stopped = stopped
    return rows


def exponent(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    if len(points) < 2:
        return float("nan")
    xs, ys = [math.log(x) for x, _ in points], [math.log(max(y, 1e-12)) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def fits(rows: list[dict]) -> dict[str, tuple[float, float]]:
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        out[method] = (exponent([(r["tokens"], r["time_s"]) for r in pts]),
                       exponent([(r["tokens"], r["peak_extra_gib"]) for r in pts]))
    return out


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    import torch

    names = list(dict.fromkeys(r["method"] for r in rows))
    print(f"\nPixel-dense upsampling, {args.preset} shapes (C=384), CPU, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; tiled: {args.tile}x{args.tile}-token tiles")
    print("time s / peak extra GiB (speed-up over before)")
    print(f"{'side':>5} {'tokens':>7} | " + " | ".join(f"{m:>24}" for m in names))
    for side in dict.fromkeys(r["side"] for r in rows):
        cells = []
        for m in names:
            r = next((r for r in rows if r["method"] == m and r["side"] == side), None)
            if r is None:
                cells.append(f"{'-':>24}")
            else:
                speed = "" if math.isnan(r["speedup_vs_before"]) else f" ({r['speedup_vs_before']:.2f}x)"
                cells.append(f"{r['time_s']:>7.3f} / {r['peak_extra_gib']:6.3f}{speed:>9}")
        print(f"{side:>5} {(side // args.patch) ** 2:>7} | " + " | ".join(cells))
    exponents = {m: fit for m, fit in fits(rows).items() if not math.isnan(fit[0])}
    if exponents:  # a slope needs two sizes
        print("\nexponent in tokens (time, memory), least squares over the sizes measured")
    for m, (t, mem) in exponents.items():
        print(f"  {m:>8}: time {t:5.2f}   memory {mem:5.2f}")
    for m, why in getattr(args, "stopped", {}).items():
        print(f"  {m}: {why}")


def plot(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.5))
    exps = fits(rows)
    for m, marker in zip(dict.fromkeys(r["method"] for r in rows), "os^dvP*X"):
        pts = [r for r in rows if r["method"] == m]
        tokens = [r["tokens"] for r in pts]
        label_t, label_m = f"{m} (slope {exps[m][0]:.2f})", f"{m} (slope {exps[m][1]:.2f})"
        ax_time.plot(tokens, [r["time_s"] for r in pts], marker=marker, label=label_t)
        ax_mem.plot(tokens, [r["peak_extra_gib"] for r in pts], marker=marker, label=label_m)
    for ax, ylabel in ((ax_time, "median time (s)"), (ax_mem, "peak extra memory (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("feature tokens (h x w)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_mem.axhline(args.memory_cap, color="grey", linestyle=":", linewidth=1)
    ax_time.set_title("Time")
    ax_mem.set_title("Peak extra memory (output included)")
    fig.suptitle(f"Pixel-dense upsampling, {args.preset} shapes, CPU ({rows[0]['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="dinov3-splus16", help="model shapes: dinov3-splus16 (patch 16) or dinov2-s14")
    p.add_argument("--sizes", type=int, nargs="+", help="image sides in pixels (default 256, 448, 512, 720, 1024, 1440, 2048: 256 to 16k tokens at p16)")
    p.add_argument("--methods", nargs="+", default=list(OURS), choices=OURS, help="our rows (default all)")
    p.add_argument("--baseline", type=lambda s: Path(s) if s else None,
                   help="folder holding the 'before' uplift package (e.g. a main-branch checkout; empty: none)")
    p.add_argument("--peer", action="append", default=[], metavar="NAME[=PATH]",
                   help=f"also time a peer: {', '.join(PEERS)} (PATH: a local checkout, else torch.hub from GitHub)")
    p.add_argument("--peer-kwargs", type=json.loads, default={}, help="JSON kwargs for the peers' hub entries")
    p.add_argument("--tile", type=int, default=16, help="tile side in feature tokens for 'tiled' (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per method and size (default 3)")
    p.add_argument("--memory-cap", type=float, default=8.0, help="GiB a method may be expected to need (default 8)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per (method, size) process")
    p.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default bench/results)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: sides 32 and 64, 1 repeat, tiles of 1 token")
    p.add_argument("--_probe", help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    if args._probe:
        return args
    from uplift.config import UPLiFTConfig

    args.patch = UPLiFTConfig.preset(args.preset).patch_size
    if args.quick:
        args.sizes, args.repeats, args.tile = args.sizes or [2 * args.patch, 4 * args.patch], 1, 1
    args.sizes = args.sizes or [256, 448, 512, 720, 1024, 1440, 2048]
    bad = [s for s in args.sizes if s % args.patch]
    if bad:
        p.error(f"--sizes must be multiples of the patch size {args.patch}: {bad}")
    args.warmup_size = 2 * args.patch
    args.peer_sources = {}
    for item in args.peer:
        name, _, source = item.partition("=")
        if name not in PEERS:
            p.error(f"--peer {name}: known peers are {', '.join(PEERS)}")
        args.peer_sources[name] = source or None
    args.peers = list(args.peer_sources)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._probe:
        print(json.dumps(_probe(json.loads(args._probe))))
        return
    sys.path.insert(0, str(HERE))
    from probe import CALIBRATION_BYTES, write_results

    start = time.perf_counter()
    calibration = _run_child({"method": "calibration"}, 600)
    print(f"CPU memory probe calibration: allocated {CALIBRATION_BYTES / 1e6:.0f} MB, "
          f"measured {calibration['extra'] / 1e6:.1f} MB")
    rows = run_benchmark(args)
    if not rows:
        raise SystemExit("nothing was measured")
    print_table(rows, args)
    stem = f"scaling_cpu_{args.preset}" + ("_quick" if args.quick else "")
    write_results(rows, args.out, stem, lambda r, path: plot(r, args, path), start)


if __name__ == "__main__":
    main()
