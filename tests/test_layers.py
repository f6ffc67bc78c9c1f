"""One direction of dependencies: ``uplift/`` is a library; the experiments (``tasks/``, ``datamodules/``) live above.

- importing any module of ``uplift`` pulls in neither Lightning, ``tasks`` nor ``datamodules``;
- ``uplift/`` reads no repository paths and ships no test fixtures;
- the project works installed from a wheel, not only from an editable checkout.
"""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import uplift
from tests.conftest import REPO

LIBRARY = REPO / "uplift"


def test_importing_the_library_pulls_in_no_experiment_code() -> None:
    modules = sorted(f"uplift.{m.name}" for m in pkgutil.walk_packages([str(LIBRARY)]) if not m.name.startswith("_"))
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'tasks', "
            "'datamodules')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"importing {len(modules)} uplift modules loaded {result.stdout.strip()}"


def test_the_library_reads_no_repository_paths_and_ships_no_fixtures() -> None:
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        text = path.read_text()
        for pattern in (r"parents\[\d\]", r"[\"']tests/", r"\bimport (tasks|datamodules|lightning)\b",
                        r"\bfrom (tasks|datamodules|lightning)\b", r"\btiny\w*\s*=", r"def tiny_"):
            offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not offenders, offenders


def _site_packages() -> list[str]:
    """The directories the running environment imports its dependencies from (not this checkout)."""
    paths = {sysconfig.get_paths()["purelib"], *(p for p in sys.path if p.endswith("site-packages"))}
    return sorted(p for p in paths if Path(p).is_dir() and Path(p).resolve() != REPO.resolve())


@pytest.mark.slow
def test_a_wheel_install_works_outside_the_checkout(tmp_path: Path) -> None:
    """``pip install`` of the built wheel into a fresh environment (its dependencies taken from this one, so no
    download): ``uplift --help`` and ``import uplift`` work from another folder, from the installed files."""
    import shutil

    source = tmp_path / "source"  # setuptools builds in the source folder: keep the checkout clean
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "uplift", "tasks", "datamodules"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("uplift-*.whl")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_dependencies.pth").write_text("\n".join(_site_packages()) + "\n")  # plain paths: no .pth hooks
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import uplift, tasks, datamodules; "
                            "print(uplift.__file__); print(tasks.__file__); print(uplift.__version__)"],
                           capture_output=True, text=True, cwd=outside, env=clean)
    assert where.returncode == 0, where.stderr[-2000:]
    files = where.stdout.split()
    assert all(Path(f).is_relative_to(env_dir) for f in files[:2]), files  # the installed copy, not the checkout
    assert files[2] == uplift.__version__
    help_text = subprocess.run([str(env_dir / "bin" / "uplift"), "--help"], capture_output=True, text=True,
                               cwd=outside, env=clean)
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    assert "fit" in help_text.stdout and "predict" in help_text.stdout
    upscale = subprocess.run([str(env_dir / "bin" / "uplift-upscale"), "--help"], capture_output=True, text=True,
                             cwd=outside, env=clean)
    assert upscale.returncode == 0 and "2^steps" in upscale.stdout
