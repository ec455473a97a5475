"""The training floor's pieces in-process: the learning-rate schedule, EMA, the step, the
config's refusals, the model a run builds, optimizer state loading, compiling, and the metrics
log's optional TensorBoard."""

import math
import sys
from dataclasses import replace

import pytest
import torch

from normfree.training.config import TrainConfig, preset
from normfree.training.logs import MetricsLog
from normfree.errors import ConfigError, MissingDependency, TrainingDiverged
from normfree import create_model
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
    losses = [train_step(model, opt, x, y, label_smoothing=0.1).loss.item()
              for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_nan_loss_stops_with_advice():
    cfg = preset("debug")
    model = create_model("nfnet_tiny", num_classes=4)
    from normfree.training.optim import build_optimizer
    x = torch.full((2, 3, 16, 16), float("nan"))
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train_step(model, build_optimizer(cfg, model), x, torch.zeros(2, dtype=torch.long))


def test_config_overrides_the_models_regularisation_and_skip_init():
    from types import SimpleNamespace

    from normfree.training.model_setup import model_for
    from normfree.training.specs import ModelSpec, spec_from
    data = SimpleNamespace(classes=list("abcd"), in_chans=3)
    cfg = replace(preset("debug"), dropout=0.3, stochastic_depth=0.2, skip_init=False)
    model = model_for(spec_from(ModelSpec, cfg), data)
    assert model.cfg.dropout == 0.3 and model.cfg.stochastic_depth == 0.2
    gains = [m.skip_gain.item() for m in model.modules() if hasattr(m, "skip_gain")]
    assert gains and all(g == 1.0 for g in gains)
    default = model_for(spec_from(ModelSpec, preset("debug")), data)
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


def test_compiling_for_the_cpu_leaves_the_loggers_to_the_run():
    """Inductor's CUDA notice is quieted by the run, for its duration (`loop.train`, tested in
    tests/e2e/test_process_settings.py), not by compiling, which changes no logger."""
    import logging

    from normfree.training.model_setup import compiled
    notices = logging.getLogger("torch.utils.cpp_extension")
    before = notices.level
    model = create_model("nfnet_tiny", 10)
    step = compiled(model, preset("debug", compile=True), torch.device("cpu"))
    assert step is not model  # compiled lazily, on the first call
    assert notices.level == before


@pytest.mark.parametrize("field,value,allowed", [
    ("optimizer", "adam", "sgd, adamw"), ("dataset", "cifar", "fashion-mnist, folder, synthetic"),
    ("numerics", "jax", "deepmind, timm"), ("bad_images", "ignore", "skip, stop"),
    ("model", "nfnet_f9", "nfnet_f0, nfnet_f1"), ("lr", float("inf"), "finite")])
def test_config_refuses_unknown_choices_naming_flag_and_values(field, value, allowed):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**{field: value})
    message = str(error.value)
    assert message.startswith("--" + field.replace("_", "-")) and allowed in message


def test_missing_tensorboard_is_an_error_not_an_exit(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(MissingDependency, match=r"pip install 'normfree\[tensorboard\]'"):
        MetricsLog(tmp_path, tensorboard=True)
