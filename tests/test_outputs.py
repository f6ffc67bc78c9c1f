"""Where the commands write (uplift/outputs.py): writable folders, collision-free names, whole files."""

from __future__ import annotations

from pathlib import Path

import pytest

from uplift.errors import ConfigError
from uplift.outputs import check_writable, output_stems, replace_atomically


def test_output_stems_never_collide() -> None:
    names = ["a.jpg", "a.png", "sub/a.jpg", "b.png", "B.PNG", "c.jpg", "c.jpg", "/abs/path/d.png", "photo"]
    stems = [p.as_posix() for p in output_stems(names)]
    assert stems == ["a.jpg", "a.png", "sub/a", "b.png", "B.PNG~2", "c.jpg", "c.jpg~2", "d", "photo"]
    files = {f"{s}{suffix}".casefold() for s in stems for suffix in (".safetensors", "_pca.png")}
    assert len(files) == 2 * len(names)
    # a kept extension never lands on another input's stem
    assert [p.as_posix() for p in output_stems(["x.jpg", "x.png", "x.jpg.png"])] == ["x.jpg", "x.png", "x.jpg~2"]


def test_an_unwritable_folder_is_one_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be")  # unwritable for every user, root included
    with pytest.raises(ConfigError, match=r"Cannot write the features to .*blocker/out \(.*\); choose a writable"):
        check_writable(blocker / "out", "the features")


def test_a_write_that_fails_leaves_no_file_of_the_final_name(tmp_path: Path) -> None:
    target = tmp_path / "a.png"

    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(target, broken)
    assert list(tmp_path.iterdir()) == []
    replace_atomically(target, lambda path: path.write_bytes(b"whole"))
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]
