"""Where the commands write: one place for output folders and file names.

Every command that writes files (``uplift-features``, ``uplift-upscale``, ``uplift predict``, the training runs)
checks its output folders before any work (an unwritable folder is one error up front, not a traceback after
hours), derives collision-free output names from its inputs (``a.jpg`` and ``a.png`` side by side must not
overwrite each other's results), and writes each file under a temporary name first, so a file of the final name
is always whole, even after Ctrl-C.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence, Union

from uplift.errors import ConfigError

__all__ = ["check_writable", "output_stems", "replace_atomically"]


def check_writable(folder: Union[str, Path], what: str = "the outputs") -> Path:
    """Create ``folder`` and write a probe file there now, or one :class:`ConfigError` naming ``what`` and the
    folder."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".uplift-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"Cannot write {what} to {folder} ({type(err).__name__}: {err.strerror or err}); choose a "
                          f"writable folder.") from err
    return folder


def output_stems(files: Sequence[Path], root: Path) -> list[Path]:
    """An output stem (relative path without suffix) per input file that no other input shares: ``a.jpg`` gives
    ``a``, unless ``a.png`` is there too, then ``a.jpg`` and ``a.png`` (compared case-insensitively, for file
    systems that are; a number is added if names still meet)."""
    relative = [f.relative_to(root) if f != root else Path(f.name) for f in files]
    stems = [r.with_suffix("") for r in relative]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[str(stem).lower()] = counts.get(str(stem).lower(), 0) + 1
    chosen = [r if counts[str(s).lower()] > 1 else s for r, s in zip(relative, stems)]
    taken: set[str] = set()
    unique = []
    for stem in chosen:
        candidate, n = stem, 1
        while str(candidate).lower() in taken:
            candidate, n = stem.with_name(f"{stem.name}_{n}"), n + 1
        taken.add(str(candidate).lower())
        unique.append(candidate)
    return unique


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary path)``, then rename: a file of this name is always whole, even after Ctrl-C."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix tells PIL the format
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)

