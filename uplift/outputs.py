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
from collections import Counter
from typing import Callable, Iterable, Union

from uplift.errors import ConfigError

__all__ = ["check_writable", "output_key", "output_stem", "output_stems", "replace_atomically"]


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


def output_stem(name: str) -> Path:
    """An input name as a relative output path without its extension: relative paths are kept, absolute ones (or
    with ``..``) reduced to the file name; a name without an extension has its separators and dots replaced."""
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        path = Path(path.name)
    return path.with_suffix("") if path.suffix else Path(str(path).replace("/", "_").replace(".", "_"))


def _with_extension(name: str) -> Path:
    """The same path, extension kept (``a.jpg`` -> ``a.jpg``), for inputs that share a stem."""
    stem = output_stem(name)
    suffix = Path(name).suffix
    return stem.with_name(stem.name + suffix) if suffix else stem


def output_key(path: Path) -> str:
    """How file names compare (case-insensitively)."""
    return path.as_posix().casefold()  # case-insensitive file systems (macOS, Windows) see A.png == a.png


def output_stems(names: Iterable[str]) -> list[Path]:
    """One distinct output stem per input name, in order: the name without its extension (``photos/a.jpg`` ->
    ``photos/a``); names that would share a stem keep their extension in it (``a.jpg`` -> ``a.jpg``, ``a.png`` ->
    ``a.png``); anything still taken (the same name twice) gets ``~2``, ``~3``, ... Stems are compared
    case-insensitively, and distinct stems give distinct files (``<stem>.safetensors``, ``<stem>_pca.png``)."""
    names = list(names)
    stems = [output_stem(n) for n in names]
    shared = Counter(output_key(s) for s in stems)
    taken: set[str] = set()
    out = []
    for name, stem in zip(names, stems):
        if shared[output_key(stem)] > 1:
            stem = _with_extension(name)
        candidate, n = stem, 1
        while output_key(candidate) in taken:
            n += 1
            candidate = stem.with_name(f"{stem.name}~{n}")
        taken.add(output_key(candidate))
        out.append(candidate)
    return out


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary path)``, then rename: a file of this name is always whole, even after Ctrl-C."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix tells PIL the format
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)

