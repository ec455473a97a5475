"""`train` runs of the `debug` preset: the files a run writes, validation cadence, resuming bit
for bit, refusals that leave the output untouched, and TensorBoard scalars."""

import importlib

import pytest
import torch

from normfree.errors import CheckpointError, ConfigError
from normfree.training.checkpoints import load_checkpoint
from normfree.training.config import preset
from normfree.training.logs import read_metrics
from normfree.training.loop import train


def debug(tmp_path, **kw):
    return preset("debug", out_dir=str(tmp_path / "run"), progress=False, **kw)


def test_debug_run_writes_artefacts(tmp_path):
    result = train(debug(tmp_path))
    run = tmp_path / "run"
    for name in ("metrics.csv", "config.json", "curves.png", "results.json", "checkpoint.pt",
                 "model.safetensors"):
        assert (run / name).is_file(), name
    assert 0.0 <= result["test_top1"] <= 100.0 and result["steps"] == 2 * 12
    assert result["test_top1"] > 20.0  # well above chance (10 %) on the synthetic classes


@pytest.mark.parametrize("eval_every, validated", [(2, [False, True, True]),
                                                   (0, [False, False, True])])
def test_validation_every_n_epochs_and_always_after_the_last(tmp_path, eval_every, validated):
    result = train(debug(tmp_path, epochs=3, eval_every=eval_every))
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["val_acc"] is not None for r in rows] == validated
    assert result["val_top1"] in (rows[-1]["val_acc"], rows[-1]["val_acc_ema"])
    assert (tmp_path / "run" / "curves.png").is_file()


class Interrupted(Exception):
    pass


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    straight = train(debug(tmp_path / "a", epochs=3))
    train_module = importlib.import_module("normfree.training.loop")
    real_save = train_module.save_checkpoint

    def save_then_die(*args, **kwargs):  # the process "dies" right after the first checkpoint
        real_save(*args, **kwargs)
        raise Interrupted
    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    interrupted = debug(tmp_path / "b", epochs=3)
    with pytest.raises(Interrupted):
        train(interrupted)
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    from dataclasses import replace
    resumed = train(replace(interrupted, resume=True))
    assert resumed["steps"] == straight["steps"]
    assert resumed["test_top1"] == straight["test_top1"]
    a = load_checkpoint(tmp_path / "a" / "run" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_resume_with_other_flags_is_refused(tmp_path):
    train(debug(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match="--lr: the run has 0.05, given 0.5"):
        train(debug(tmp_path, epochs=1, lr=0.5, resume=True))


def test_existing_output_is_refused_untouched(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="--resume"):
        train(debug(tmp_path))
    assert (run / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in run.iterdir()) == ["precious.txt"]


def test_truncated_checkpoint_is_named(tmp_path):
    train(debug(tmp_path, epochs=1))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        train(debug(tmp_path, epochs=2, resume=True))


def test_tensorboard_scalars_can_be_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train(debug(tmp_path, tensorboard=True))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    val = events.Scalars("val_acc")
    assert [e.step for e in val] == [12, 24]
    import csv
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert val[-1].value == pytest.approx(float(rows[-1]["val_acc"]))
