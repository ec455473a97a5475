import importlib
import math
from dataclasses import replace

import pytest
import torch

from normfree.errors import CheckpointError
from normfree.training.checkpoints import load_checkpoint
from normfree.training.config import preset
from normfree.training.logs import read_metrics
from normfree.errors import ConfigError, TrainingDiverged
from normfree import create_model
from normfree.training.loop import train
from normfree.training.optim import EMA, load_optimizer_state, lr_at, train_step


def test_lr_warmup_then_cosine():
    assert lr_at(0, 1.0, 10, 110) == 0.0
    assert lr_at(5, 1.0, 10, 110) == 0.5
    assert lr_at(10, 1.0, 10, 110) == 1.0
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.0)
    assert lr_at(35, 2.0, 10, 110) == pytest.approx(1.0 + math.cos(math.pi / 4))


def test_ema_decay_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, max_decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, 0)  # decay (1 + 0)/(10 + 0) = 0.1
    assert ema.module.weight.item() == pytest.approx(0.9)
    ema.update(model, 10**6)  # capped at 0.999
    assert ema.module.weight.item() == pytest.approx(0.9 + 0.1 * 0.001)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = preset("debug", clip_factor=0.05, lr=0.05)
    model = create_model("nfnet_tiny", num_classes=4)
    from normfree.training.optim import build_optimizer
    opt = build_optimizer(cfg, model)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    losses = [train_step(model, opt, x, y, cfg)[0].item() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_nan_loss_stops_with_advice():
    cfg = preset("debug")
    model = create_model("nfnet_tiny", num_classes=4)
    from normfree.training.optim import build_optimizer
    x = torch.full((2, 3, 16, 16), float("nan"))
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train_step(model, build_optimizer(cfg, model), x, torch.zeros(2, dtype=torch.long), cfg)


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


def test_config_overrides_the_models_regularisation_and_skip_init():
    from types import SimpleNamespace

    from normfree.training.runs import model_for
    data = SimpleNamespace(classes=list("abcd"), in_chans=3)
    cfg = replace(preset("debug"), dropout=0.3, stochastic_depth=0.2, skip_init=False)
    model = model_for(cfg, data)
    assert model.cfg.dropout == 0.3 and model.cfg.stochastic_depth == 0.2
    gains = [m.skip_gain.item() for m in model.modules() if hasattr(m, "skip_gain")]
    assert gains and all(g == 1.0 for g in gains)
    default = model_for(preset("debug"), data)
    assert all(m.skip_gain.item() == 0.0 for m in default.modules() if hasattr(m, "skip_gain"))


def test_loaded_optimizer_buffers_take_their_parameters_layout():
    # a fused step reads a contiguous buffer of a channels_last weight in the wrong order
    def run(saved_format):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9, fused=True)
        conv.weight.grad = torch.randn_like(conv.weight)
        conv.bias.grad = torch.randn_like(conv.bias)
        optimizer.step()
        state = optimizer.state_dict()
        buffer = state["state"][0]["momentum_buffer"]
        state["state"][0]["momentum_buffer"] = buffer.contiguous(memory_format=saved_format)
        load_optimizer_state(optimizer, state)
        optimizer.step()
        return conv.weight.detach().clone(), optimizer.state[conv.weight]["momentum_buffer"]
    expected, _ = run(torch.channels_last)
    weight, buffer = run(torch.contiguous_format)
    assert buffer.stride() == weight.stride()
    assert torch.equal(weight, expected)


def test_compiling_for_the_cpu_keeps_inductors_cuda_notice_out_of_the_output():
    import logging

    from normfree.training.runs import compiled
    model = create_model("nfnet_tiny", 10)
    step = compiled(model, preset("debug", compile=True), torch.device("cpu"))
    assert step is not model  # compiled lazily, on the first call
    assert logging.getLogger("torch.utils.cpp_extension").getEffectiveLevel() == logging.ERROR
