"""Fault tolerance: SIGKILL and SIGTERM mid-epoch, then --resume, end bit-exact with an
uninterrupted run; a failing disk never destroys the last good checkpoint."""

import errno
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

from normfree.errors import OutputError
from normfree.training.checkpoints import load_checkpoint
from normfree.training.config import preset
from normfree.training.loop import train

from helpers import wait_for_checkpoint

# 3 epochs × 36 steps of nfnet_tiny on synthetic data; a checkpoint after every step
FLAGS = ["--preset", "debug", "--epochs", "3", "--synthetic-size", "1280", "--no-progress"]


def run_args(out, *extra):
    return [sys.executable, "-m", "normfree", "train", *FLAGS, "--out-dir", str(out), *extra]


def start_and_signal(out, number, at_step):
    """Run training in a subprocess; send `number` once a checkpoint of `at_step` exists."""
    process = subprocess.Popen(run_args(out, "--checkpoint-every", "1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(process, out / "checkpoint.pt", at_step)
    process.send_signal(number)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(run_args(out), check=True, capture_output=True)
    return load_checkpoint(out / "checkpoint.pt")


def assert_same_weights(a, b):
    assert a["step"] == b["step"]
    for part in ("model", "ema", "optimizer"):
        left, right = a[part], b[part]
        if part == "optimizer":
            left = {i: s["momentum_buffer"] for i, s in left["state"].items()}
            right = {i: s["momentum_buffer"] for i, s in right["state"].items()}
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left), part


@pytest.mark.parametrize("number", [signal.SIGKILL, signal.SIGTERM])
def test_killed_mid_epoch_then_resumed_is_bit_exact(number, uninterrupted, tmp_path):
    at_step = random.Random(number).randrange(5, 80)  # a step inside some epoch
    out = tmp_path / "run"
    code, _, stderr = start_and_signal(out, number, at_step)
    stopped = load_checkpoint(out / "checkpoint.pt")
    if number == signal.SIGTERM:  # graceful: checkpoint of the step it was in, then exit 143
        assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in stderr
        assert "--resume" in stderr
    else:
        assert code == -signal.SIGKILL
    assert at_step <= stopped["step"] < 108
    subprocess.run(run_args(out, "--checkpoint-every", "1", "--resume"), check=True,
                   capture_output=True)
    assert_same_weights(load_checkpoint(out / "checkpoint.pt"), uninterrupted)
    epochs = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()]
    assert epochs == ["epoch", "1", "2", "3"]  # no row lost or repeated by the interruption


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])  # full disk, read-only mount
def test_failing_disk_keeps_the_last_good_checkpoint(error, tmp_path, monkeypatch):
    """(Root ignores file permissions, so the failure is injected where the OS reports it.)"""
    cfg = preset("debug", out_dir=str(tmp_path / "run"), progress=False, epochs=2)
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) > 2:  # the first checkpoint (and config.json) got written
            raise OSError(error, os.strerror(error))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match=rf"checkpoint.pt.*{os.strerror(error)}.*previous"):
        train(cfg)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []
