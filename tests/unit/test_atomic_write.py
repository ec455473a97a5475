"""files.atomic_write: the umask decides a new file's mode without the process's umask ever
being changed, and a failed write leaves the previous file and no temporary file."""

import os
import stat

import pytest

from normfree.errors import OutputError
from normfree.files import atomic_write


def test_the_file_gets_the_umask_and_the_umask_is_never_set(tmp_path, monkeypatch):
    set_umask = os.umask
    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or set_umask(mask))
    before = set_umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"new"))
    finally:
        set_umask(before)
    assert calls == []  # setting it, even to read it, races with every other thread
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_failed_write_keeps_the_previous_file_and_no_temporary_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")

    def full_disk(f):
        f.write(b"ne")
        raise OSError(28, "No space left on device")
    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(tmp_path / "a.bin", full_disk)
    assert (tmp_path / "a.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
