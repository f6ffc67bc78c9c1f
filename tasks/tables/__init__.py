"""What every ``make reproduce-tableN`` driver shares (one module per table beside this one).

- :func:`fit_once`: ``uplift fit`` of one run folder, exactly once. A fit that finished marks itself finished
  with the arguments that produced it (:mod:`tasks.cli` writes ``finished.json``); a finished fit with the same
  arguments is reused, an interrupted one resumes from its ``last.ckpt``, and a folder that holds a run of other
  arguments is an error rather than a silent mix.
- :func:`test_metrics`: ``uplift test`` and the metrics it logged; a row whose code or weights cannot be had
  raises :class:`RowUnavailable` (the table shows it as unavailable and the rest runs).
- :class:`ResultsCache`: one JSON file per finished cell, reused only when the arguments that produced it (its
  key, :func:`args_key`) are the same; unavailable rows are tried again on the next run.
- :func:`write_table` and :func:`report`: markdown + CSV, our numbers beside the paper's.
- :func:`config_stamp` (a config's text for cache keys) and :func:`main_guard` (one-line errors for the drivers).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

__all__ = ["REPO", "TINY_BANNER", "ResultsCache", "RowUnavailable", "args_key", "cell", "config_stamp", "fit_once",
           "fmt", "main_guard", "report", "test_metrics", "write_table"]

#: The checkout: ``SCALE=tiny`` runs read the generated datasets and tiny configs from ``tests/``.
REPO = Path(__file__).resolve().parents[2]

TINY_BANNER = ("!" * 100 + "\nSCALE=tiny: generated tiny data, tiny RANDOM models and a few steps. This tests the "
               "pipeline end to end; the numbers below are MEANINGLESS.\n" + "!" * 100)


class RowUnavailable(RuntimeError):
    """A row's code or weights could not be loaded here (a peer's repository, no network)."""


def config_stamp(config: str | Path) -> list[str]:
    """The text of a config and of the pieces it can compose (``pieces/*.yaml`` beside it), for a cache key: a cell is
    recomputed when its config changes, not only when its arguments do."""
    config = Path(config)
    pieces = sorted((config.parent / "pieces").glob("*.yaml"))
    return [config.read_text(), *(p.read_text() for p in pieces)]


def main_guard(prog: str, main: Callable[[], int]) -> int:
    """Run a driver; an error meant for the user (bad option, missing data or weights) ends in one line
    ``<prog>: error: ...`` and exit status 2, as the ``uplift`` command (``UPLIFT_TRACEBACK=1``: the traceback)."""
    from uplift.errors import report_user_error

    try:
        return main()
    except Exception as err:
        if not report_user_error(prog, err):
            raise
        raise SystemExit(2) from None


def args_key(*parts: Any) -> str:
    """A short, stable hash of the arguments that produce a result (``--ckpt_path`` excluded: resuming a run
    does not change what it computes)."""
    from tasks.cli import without_ckpt_path

    flat = [without_ckpt_path(list(p)) if isinstance(p, (list, tuple)) and all(isinstance(a, str) for a in p) else p
            for p in parts]
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------ running cells


def fit_once(config: str | Path, args: Sequence[str], run_dir: Path) -> Path:
    """Train one run folder with ``uplift fit --config config *args`` and return its ``last.ckpt``.

    The fit writes its checkpoints to ``run_dir/checkpoints`` (the config's ``RunCheckpoint``, whose folder follows
    ``--trainer.default_root_dir``) and, once it has
    finished, ``run_dir/finished.json`` with its arguments. A finished run with the same arguments is not
    trained again; an interrupted run (a ``last.ckpt`` but no marker) resumes from it.
    """
    from tasks.cli import read_finished, run_cli

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    argv = ["fit", "--config", str(config), *args, f"--trainer.default_root_dir={run_dir}"]
    finished = read_finished(run_dir)
    if finished is not None:
        if finished["args"] == argv and checkpoint.is_file():
            return checkpoint
        raise RuntimeError(f"{run_dir} holds a finished fit of other arguments ({finished['args']}); "
                           f"remove the folder or use another results folder.")
    resume = [f"--ckpt_path={checkpoint}"] if checkpoint.is_file() else []
    run_cli([*argv, *resume])
    if read_finished(run_dir) is None or not checkpoint.is_file():
        raise RuntimeError(f"`uplift {' '.join(argv)}` ended without finishing (no {run_dir / 'finished.json'}).")
    return checkpoint


def test_metrics(config: str | Path, args: Sequence[str], keys: Sequence[str],
                 optional: Sequence[str] = ()) -> dict[str, float]:
    """``uplift test --config config *args``: the logged values of ``keys`` (and of those of ``optional`` it logged)."""
    from tasks.cli import run_cli
    from uplift.errors import user_error
    from uplift.upsamplers import UpsamplerUnavailableError

    try:
        cli = run_cli(["test", "--config", str(config), *args])
    except Exception as err:
        cause = user_error(err)
        if isinstance(cause, UpsamplerUnavailableError):
            raise RowUnavailable(str(cause).splitlines()[0]) from err
        raise
    metrics = cli.trainer.callback_metrics
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise RuntimeError(f"`uplift test --config {config}` logged no {missing} (it logged {sorted(metrics)}).")
    return {k: float(metrics[k]) for k in [*keys, *optional] if k in metrics}


# ------------------------------------------------------------------------------------------ results cache


class ResultsCache:
    """Finished results as ``<folder>/<name>.json`` (``{"key": ..., "status": "done", ...}``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str, key: str) -> Optional[dict[str, Any]]:
        """The stored result of ``name`` if it was produced with ``key``, else None."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:  # a file cut short by an interruption: recompute it
            return None
        return result if result.get("key") == key and result.get("status") == "done" else None

    def put(self, name: str, key: str, result: dict[str, Any]) -> None:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")  # never leave a half-written result behind
        partial.write_text(json.dumps(dict(result, key=key), indent=2))
        partial.replace(path)

    def __call__(self, name: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``compute()`` unless a result of ``name`` with ``key`` is stored. Only results with ``status: done`` are
        stored; :class:`RowUnavailable` becomes ``{"status": "unavailable", "reason": ...}`` (not stored)."""
        stored = self.get(name, key)
        if stored is not None:
            return dict(stored, cached=True)
        try:
            result = compute()
        except RowUnavailable as err:
            return {"status": "unavailable", "reason": str(err)}
        if result.get("status") == "done":
            self.put(name, key, result)
        return result


# ------------------------------------------------------------------------------------------ tables


def fmt(value: Optional[float], digits: int = 2, scale: float = 1.0) -> str:
    if value is None or value == "":
        return "-"
    return f"{float(value) * scale:.{digits}f}"


def cell(ours: Optional[float], paper: Optional[float], digits: int = 2, scale: float = 1.0) -> str:
    """``ours (paper)``; ``-`` where a value does not exist (``scale`` applies to ours: fractions -> percent)."""
    return f"{fmt(ours, digits, scale)} ({fmt(paper, digits)})"


def write_table(stem: Path, title: str, notes: Sequence[str], header: Sequence[str], rows: Sequence[Sequence[str]],
                records: Sequence[dict[str, Any]], tiny: bool) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (title, notes, one markdown table) and ``<stem>.csv`` (``records``, one per value)."""
    if tiny:
        title += " (SCALE=tiny: MEANINGLESS numbers, pipeline test only)"
    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    fields = list(dict.fromkeys(k for r in records for k in r))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    return md, csv_path


def results_dir(root: str | Path, tiny: bool) -> Path:
    """Tiny runs write beside, never over, real results."""
    return Path(root) / "tiny" if tiny else Path(root)


def report(md: Path, cells: dict[Any, dict[str, Any]], tiny: bool, unit: str = "cells") -> None:
    """Print the written table (followed by the banner at tiny scale) and what the cache provided."""
    print("\n" + md.read_text())
    if tiny:
        print(TINY_BANNER)
    reused = sum(1 for v in cells.values() if v.get("cached"))
    print(f"Wrote {md} and {md.with_suffix('.csv')} ({reused} of {len(cells)} {unit} reused from the cache)")
