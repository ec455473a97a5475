"""Data-parallel training with torchrun (gloo on CPU): 2 processes × half the batch train the same
weights as 1 process × the whole batch, and a stopped 2-process run resumes in 1 process."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from normfree.training.checkpoints import load_checkpoint
from normfree.training.logs import read_metrics

from helpers import wait_for_checkpoint

# nfnet_tiny on synthetic data, 12 steps an epoch of the global batch 32; no augmentation and
# no stochastic regularisation, so the two ways of computing a step differ only in rounding
FLAGS = ["--preset", "debug", "--crop-padding", "0", "--no-flip", "--no-progress"]


def train_command(out, nproc, *extra):
    return [sys.executable, "-m", "normfree", "train", *FLAGS, "--out-dir", str(out),
            "--nproc", str(nproc), *extra]


def relative_difference(a, b):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item()
               for k in b if b[k].is_floating_point())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """p1, p2: the global batch of 32 in 1 and 2 processes; p2_accumulated: 2 processes, each
    its 16 images as 2 micro-batches of 8, evaluating its share of the images."""
    root = tmp_path_factory.mktemp("ddp")
    for name, nproc, extra in (("p1", 1, ()), ("p2", 2, ()),
                               ("p2_accumulated", 2, ("--device-batch-size", "8"))):
        result = subprocess.run(train_command(root / name, nproc, "--epochs", "2", *extra),
                                check=True, capture_output=True, text=True, timeout=600)
        # DDP's note on channels_last gradients copied out of its buckets is not shown
        assert "Warning" not in result.stderr, result.stderr[-2000:]
    return root


@pytest.mark.parametrize("name", ["p2", "p2_accumulated"])
def test_two_processes_train_the_weights_of_one(runs, name):
    one, two = (load_checkpoint(runs / run / "checkpoint.pt") for run in ("p1", name))
    assert one["step"] == two["step"] == 24  # one update per global batch
    assert relative_difference(two["model"], one["model"]) < 1e-5
    assert relative_difference(two["ema"], one["ema"]) < 1e-5
    rows = {run: read_metrics(runs / run / "metrics.csv") for run in ("p1", name)}
    for a, b in zip(rows["p1"], rows[name]):  # metrics are reduced over the processes
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_acc"] == b["train_acc"] and a["val_acc"] == b["val_acc"]
    results = {run: json.loads((runs / run / "results.json").read_text())
               for run in ("p1", name)}  # the test split evaluated in shares, counts summed
    assert results[name]["test_top1"] == results["p1"]["test_top1"]


def test_stopped_two_process_run_resumes_in_one_process(tmp_path):
    longer = ["--epochs", "2", "--synthetic-size", "2048"]  # 60 steps an epoch
    subprocess.run(train_command(tmp_path / "straight", 1, *longer), check=True,
                   capture_output=True, timeout=600)
    out = tmp_path / "run"
    process = subprocess.Popen(train_command(out, 2, *longer, "--checkpoint-every", "1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(process, out / "checkpoint.pt", 8)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to the training processes
    process.communicate(timeout=120)
    stopped = load_checkpoint(out / "checkpoint.pt")
    assert process.returncode == 128 + signal.SIGTERM and 8 <= stopped["step"] < 120
    subprocess.run(train_command(out, 1, *longer, "--checkpoint-every", "1", "--resume"),
                   check=True, capture_output=True, timeout=600)
    resumed = load_checkpoint(out / "checkpoint.pt")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert resumed["step"] == straight["step"] == 120
    loss = {name: [r["train_loss"] for r in read_metrics(path / "metrics.csv")]
            for name, path in (("resumed", out), ("straight", tmp_path / "straight"))}
    assert loss["resumed"] == pytest.approx(loss["straight"], rel=1e-3)
    assert relative_difference(resumed["model"], straight["model"]) < 1e-3


def test_global_batch_must_divide_over_the_processes(tmp_path):
    result = subprocess.run(train_command(tmp_path / "run", 3, "--batch-size", "32"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "must divide evenly over 3 processes" in result.stdout + result.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_signal_to_one_process_stops_every_process_alike(tmp_path):
    """SIGTERM to rank 1 alone: both ranks checkpoint the same step, print the same line and
    exit 143 (the signal reaches rank 0 through the collective, not as a signal of its own)."""
    out = tmp_path / "run"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2"}
    command = [sys.executable, "-m", "normfree", "train", *FLAGS, "--out-dir", str(out),
               "--epochs", "2", "--synthetic-size", "2048", "--checkpoint-every", "1"]
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    wait_for_checkpoint(ranks[0], out / "checkpoint.pt", 4)
    ranks[1].send_signal(signal.SIGTERM)
    errors = [rank.communicate(timeout=120)[1] for rank in ranks]
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    expected = (f"normfree train: stopped by SIGTERM at step {step}; the checkpoint in {out} "
                "is saved: continue with --resume")
    for rank, err in zip(ranks, errors):
        assert rank.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert expected in err.splitlines() and "Traceback" not in err


def children(pid):
    return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def test_torchrun_restarts_a_killed_process_and_the_run_resumes(runs, tmp_path):
    """`torchrun --max-restarts 1`: a worker SIGKILLed mid-run is restarted with its peer; with
    `--resume` in the command they continue from the last checkpoint, bit-exact."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "--max-restarts", "1", "-m", "normfree", "train",
               *FLAGS, "--out-dir", str(out), "--epochs", "2", "--checkpoint-every", "1",
               "--resume"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_for_checkpoint(process, out / "checkpoint.pt", 6)
    workers = children(process.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-3000:]
    final = load_checkpoint(out / "checkpoint.pt")
    straight = load_checkpoint(runs / "p2" / "checkpoint.pt")
    assert final["step"] == 24
    assert all(torch.equal(final["model"][k], straight["model"][k]) for k in final["model"])
