"""A run folder nothing destroys (issue 38): one owner at a time (a second process is refused,
a dead holder's lock is taken over, workers die with their launcher), verified checkpoints
with the previous one kept, side files that are conveniences, stale temp files removed."""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from normfree.cli import main
from normfree.training.checkpoints import load_checkpoint, read_checkpoint

from helpers import wait_for_checkpoint

FLAGS = ["--preset", "debug", "--no-progress"]  # nfnet_tiny, synthetic, 12 steps an epoch


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err, *fragments):
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(f in err for f in fragments), err


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
            if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch debug run checkpointed every 5 steps (so it has a previous one)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *FLAGS, "--epochs", "2", "--checkpoint-every", "5", "--out-dir",
                 str(out)]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_resume_of_a_run_whose_checkpoints_are_gone_is_refused_and_changes_nothing(run, capsys):
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.prev.pt").unlink()
    before = digests(run)
    code, _, err = cli(capsys, "train", *FLAGS, "--resume", "--out-dir", run, "--seed", "5")
    assert code == 2
    one_line(err, "results.json", "no checkpoint.pt", "new --out-dir", "checkpoint.pt back")
    assert digests(run) == before


def test_resume_without_preset_takes_the_run_settings_not_the_default_preset(run, capsys):
    """No --preset: the debug run stays a debug run (the default preset trains nfnet_s0_dense on
    Fashion-MNIST); its hand-edited config.json is named, never reported as "given"."""
    (run / "results.json").unlink()  # as if stopped while testing: resume finishes it
    (run / "config.json").write_text((run / "config.json").read_text().replace(
        '"lr": 0.05', '"lr": 0.5'))
    code, out, err = cli(capsys, "train", "--resume", "--out-dir", run, "--no-progress")
    assert code == 0, err
    assert "nfnet_tiny on synthetic" in out and "given" not in out + err
    assert "config.json does not match the checkpoint" in out
    assert "after its last step (24): testing and exporting" in out  # not "epoch 3 of 2"
    assert '"lr": 0.05' in (run / "config.json").read_text()  # rebuilt from the checkpoint


@pytest.mark.parametrize("damage", [b"", b'{"model": "nfnet_ti'])
def test_damaged_config_json_does_not_block_resume(damage, run, capsys):
    (run / "config.json").write_bytes(damage)
    (run / "results.json").unlink()
    code, out, err = cli(capsys, "train", "--resume", "--out-dir", run, "--no-progress")
    assert code == 0 and "Traceback" not in err, err
    assert "config.json is damaged (JSONDecodeError): rewritten from the checkpoint" in out
    assert '"model": "nfnet_tiny"' in (run / "config.json").read_text()


def test_garbage_metrics_csv_is_set_aside(run, capsys):
    (run / "results.json").unlink()
    (run / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage\x80\x81\n")
    code, out, err = cli(capsys, "train", "--resume", "--out-dir", run, "--no-progress")
    assert code == 0 and "Traceback" not in err, err
    assert "metrics.csv is damaged (UnicodeDecodeError): set aside as metrics.damaged.csv" in out
    assert (run / "metrics.damaged.csv").read_bytes().startswith(b"\xff\xfe")


def flip_bytes_in_tensor_data(path, count, seed=0):
    """Invert `count` bytes inside the tensor records of a checkpoint (not its zip headers)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        records = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64]
    rng = random.Random(seed)
    for _ in range(count):
        record = rng.choice(records)
        start = record.header_offset + 30 + len(record.filename) + len(record.extra) + 64
        data[rng.randrange(start, start + record.file_size - 64)] ^= 0xFF
    path.write_bytes(data)


@pytest.mark.parametrize("seed", range(8))
def test_a_byte_flipped_in_tensor_data_is_refused(seed, finished, tmp_path):
    path = tmp_path / "checkpoint.pt"
    shutil.copy(finished / "checkpoint.pt", path)
    flip_bytes_in_tensor_data(path, 1, seed)
    with pytest.raises(Exception, match="fails its checksum"):
        read_checkpoint(path)


def test_damaged_checkpoint_is_refused_in_one_line_and_resume_uses_the_previous(run, capsys):
    previous_step = read_checkpoint(run / "checkpoint.prev.pt").step
    assert previous_step == 20  # checkpoints at steps 5, 10, 15, 20 and the end (24)
    flip_bytes_in_tensor_data(run / "checkpoint.pt", 3)
    code, _, err = cli(capsys, "eval", "--checkpoint", run)
    assert code == 2
    one_line(err, "checkpoint.pt", "fails its checksum (CRC-32)")
    code, out, err = cli(capsys, "train", "--resume", "--out-dir", run, "--no-progress")
    assert code == 0, err
    assert ("set aside as checkpoint.damaged.pt: resuming from checkpoint.prev.pt (step 20)"
            in out)
    assert (run / "checkpoint.damaged.pt").is_file()
    assert read_checkpoint(run / "checkpoint.pt").step == 24
    assert read_checkpoint(run / "checkpoint.prev.pt").step == 20  # the good one, kept
    epochs = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()]
    assert epochs == ["epoch", "1", "2"]


def test_stale_temp_files_are_removed_at_the_next_start(run, capsys):
    stale = run / ".checkpoint.pt.k1lled.tmp"
    stale.write_bytes(b"x" * 300_000)
    (run / "results.json").unlink()
    code, out, _ = cli(capsys, "train", "--resume", "--out-dir", run, "--no-progress")
    assert code == 0 and not stale.exists()
    assert "removed 1 temporary file(s) (0.3 MiB) left by an interrupted write" in out


def train_command(out, *extra):
    return [sys.executable, "-m", "normfree", "train", *FLAGS, "--epochs", "3",
            "--synthetic-size", "2048", "--checkpoint-every", "1", "--out-dir", str(out), *extra]


def test_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(train_command(out), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(first, out / "checkpoint.pt", 3)
    second = subprocess.run(train_command(out, "--resume"), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 2
    one_line(second.stderr, f"{out} is in use by process {first.pid}", "another --out-dir")
    first.kill()  # kill -9: the kernel drops its lock, its PID stays in the file
    first.communicate()
    third = subprocess.run(train_command(out, "--resume"), capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"took over the lock left by process {first.pid}" in third.stdout
    epochs = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()]
    assert epochs == ["epoch", "1", "2", "3"]  # each once, in order


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_killing_the_launcher_stops_its_workers(tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # an existing folder: the launcher itself holds the lock
    launcher = subprocess.Popen(train_command(out, "--nproc", "2", "--resume"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(launcher, out / "checkpoint.pt", 3)
    assert (out / ".lock").read_text().strip() == str(launcher.pid)
    workers = [int(c) for c in
               open(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read().split()]
    assert len(workers) == 2
    launcher.kill()
    launcher.communicate()
    deadline = time.time() + 60
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "workers outlived their launcher"
    stopped = load_checkpoint(out / "checkpoint.pt")["step"]
    resumed = subprocess.run(train_command(out, "--resume"), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from step {stopped}" in resumed.stdout
    epochs = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()]
    assert epochs == ["epoch", "1", "2", "3"]


def test_peer_death_is_one_line_per_rank(tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen(train_command(out, "--nproc", "2"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(launcher, out / "checkpoint.pt", 3)
    workers = [int(c) for c in
               open(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read().split()]
    os.kill(workers[1], signal.SIGKILL)
    stdout, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 1
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "normfree: training process 1 failed (exit code -9)" in stdout.splitlines()
