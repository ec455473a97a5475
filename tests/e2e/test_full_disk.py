"""A full disk ends a run in one line with the previous checkpoint intact (issue 38, item 5):
on a small tmpfs filled to several levels where the machine lets us mount one, and always
with torch's zip writer failing as it does on a full disk (its RuntimeError)."""

import os
import subprocess

import pytest
import torch

from normfree.cli import main
from normfree.files import temp_files
from normfree.training.checkpoints import read_checkpoint

FLAGS = ["train", "--preset", "debug", "--no-progress", "--epochs", "2",
         "--checkpoint-every", "3"]


def run(capsys, out):
    code = main([*FLAGS, "--out-dir", str(out)])
    return code, capsys.readouterr().err


def assert_one_line_and_intact(code, err, out):
    assert "Traceback" not in err, err
    if code == 0:
        return
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot write" in err and "nothing was replaced" in err, err
    assert temp_files(out) == []
    if (out / "checkpoint.pt").exists():  # the last good one: complete, its CRCs check
        assert read_checkpoint(out / "checkpoint.pt").step > 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the simulated test below still runs)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_full_tmpfs_at_every_fill_level_ends_in_one_line(small_disk, capsys):
    failed = []
    for level, free_kib in enumerate([40, 200, 330, 500, 700, 900, 1100, 1400]):
        filler = small_disk / "filler"
        out = small_disk / f"run{level}"
        filler.write_bytes(b"")
        stat = os.statvfs(small_disk)
        filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free_kib * 1024))
        code, err = run(capsys, out)
        assert_one_line_and_intact(code, err, out)
        failed += [err] if code else []
        filler.unlink()
        for path in sorted(small_disk.glob(f"run{level}/**/*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    assert failed, "no fill level filled the disk"
    assert any("checkpoint" in err for err in failed)


def test_torch_zip_writer_failing_mid_checkpoint_keeps_the_previous(tmp_path, capsys,
                                                                    monkeypatch):
    real_save, calls = torch.save, []

    def save_until_full(obj, f, *args, **kwargs):  # the third checkpoint meets a full disk
        calls.append(1)
        if len(calls) < 3:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1216 "
                           "vs 1152\nframe #0: c10::ThrowEnforceNotMet")
    monkeypatch.setattr(torch, "save", save_until_full)
    out = tmp_path / "run"
    code, err = run(capsys, out)
    assert code == 2
    assert_one_line_and_intact(code, err, out)
    assert "checkpoint.pt: PyTorch's writer failed ([enforce fail" in err
    assert "MiB free on that disk" in err
    assert read_checkpoint(out / "checkpoint.pt").step == 6
    assert read_checkpoint(out / "checkpoint.prev.pt").step == 3
