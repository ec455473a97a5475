"""Gradient accumulation, fp16 loss scaling and the batch-scaled learning rate: one update per
global batch, whatever number of micro-batches computes it."""

import copy

import pytest
import torch

from normfree.errors import ConfigError, TrainingDiverged
from normfree import create_model
from normfree.training.config import peak_lr, preset
from normfree.training.optim import make_optimizer, train_step
from normfree.training.resolve import micro_batch_size


def tiny_model(dtype=torch.float64):
    """nfnet_tiny without stochastic regularisation: a step is a function of the batch alone."""
    torch.manual_seed(0)
    return create_model("nfnet_tiny", 4, dropout=0.0, stochastic_depth=0.0).to(dtype)


def batch(count=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(count, 3, 16, 16, generator=g, dtype=dtype), torch.randint(0, 4, (count,),
                                                                                   generator=g)


def updated(model, micro_batch, clip_factor, steps=2):
    """`model`'s parameters after `steps` updates on one batch of 8 in micro-batches."""
    model = copy.deepcopy(model)
    optimizer = make_optimizer(model, "sgd", lr=0.5, momentum=0.9, weight_decay=1e-3,
                               clip_factor=clip_factor)
    images, labels = batch()
    results = [train_step(model, optimizer, images, labels, micro_batch=micro_batch,
                          label_smoothing=0.1) for _ in range(steps)]
    return torch.cat([p.detach().flatten() for p in model.parameters()]), results


@pytest.mark.parametrize("clip_factor", [None, 1e-3])
@pytest.mark.parametrize("micro_batch", [1, 2, 4])
def test_micro_batches_update_as_the_whole_batch_does(micro_batch, clip_factor):
    """float64, no randomness in the step: 8/b micro-batches of b give the weights one batch of
    8 gives, to 1e-6 relative, also where AGC clips (it must see the summed gradient once)."""
    model = tiny_model()
    whole, whole_results = updated(model, None, clip_factor)
    parts, part_results = updated(model, micro_batch, clip_factor)
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (whole - start).abs().max() > 1e-3  # the updates moved the weights
    assert ((parts - whole).abs().max() / whole.abs().max()).item() < 1e-6
    assert part_results[0].loss.item() == pytest.approx(whole_results[0].loss.item(), rel=1e-9)
    assert part_results[0].logits.shape == (8, 4)
    if clip_factor:  # λ = 1e-3 clips ~30 % of units: the equality above is not AGC-free
        assert whole_results[0].clipped.item() > 0.2
        assert part_results[0].clipped.item() == pytest.approx(whole_results[0].clipped.item())
    else:
        assert part_results[0].clipped is None


def test_accumulation_moves_each_micro_batch_to_the_device_when_its_turn_comes():
    model, prepared = tiny_model(), []
    optimizer = make_optimizer(model, lr=0.1)
    images, labels = batch()
    train_step(model, optimizer, images, labels, micro_batch=2,
               prepare=lambda chunk: prepared.append(len(chunk)) or chunk)
    assert prepared == [2, 2, 2, 2]


def test_fp16_step_clips_the_unscaled_gradient():
    """With loss scaling, AGC sees the gradient at its true size: it clips the units the fp32
    step clips (the scale, 65536, would otherwise make every unit exceed λ)."""
    model = tiny_model(torch.float32)
    images, labels = batch(dtype=torch.float32)
    fractions = {}
    for precision in ("fp32", "fp16"):
        copy_ = copy.deepcopy(model)
        optimizer = make_optimizer(copy_, lr=0.1, clip_factor=0.02)
        scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
        result = train_step(copy_, optimizer, images, labels, precision=precision,
                            scaler=scaler)
        assert not result.skipped
        fractions[precision] = result.clipped.item()
    assert 0 < fractions["fp32"] < 1
    assert fractions["fp16"] == pytest.approx(fractions["fp32"], abs=0.05)


def test_fp16_overflow_skips_the_update_and_halves_the_scale():
    model = tiny_model(torch.float32)
    optimizer = make_optimizer(model, lr=0.1, clip_factor=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    before = [p.detach().clone() for p in model.parameters()]
    images, labels = batch(dtype=torch.float32)
    result = train_step(model, optimizer, images * 1e6, labels, precision="fp16", scaler=scaler)
    assert result.skipped and scaler.get_scale() == 2.0 ** 15
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    result = train_step(model, optimizer, images, labels, precision="fp16", scaler=scaler)
    assert not result.skipped
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_non_finite_loss_outside_fp16_names_the_step():
    model = tiny_model(torch.float32)
    images, labels = batch(dtype=torch.float32)
    with pytest.raises(TrainingDiverged, match="at step 7: training diverged"):
        train_step(model, make_optimizer(model, lr=0.1), images * float("nan"), labels,
                   micro_batch=4, step=7)


def test_peak_rate_scales_with_the_batch():
    assert peak_lr(preset("imagenet-f0")) == pytest.approx(1.6)  # 0.1 × 4096 / 256
    assert peak_lr(preset("imagenet-f0", batch_size=1024)) == pytest.approx(0.4)
    absolute = preset("imagenet-f0", lr=0.3)  # --lr stays absolute, whatever the batch
    assert absolute.lr_base is None and peak_lr(absolute) == 0.3
    assert peak_lr(preset("fmnist", lr_base=0.2, batch_size=128)) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="give one of --lr"):
        preset("fmnist", lr=0.1, lr_base=0.1)


@pytest.mark.parametrize("batch_size,device_batch,world,micro", [
    (4096, None, 8, 512), (4096, 64, 8, 64), (4096, 256, 1, 256), (32, 8, 2, 8)])
def test_micro_batch_size(batch_size, device_batch, world, micro):
    cfg = preset("debug", batch_size=batch_size, device_batch_size=device_batch)
    assert micro_batch_size(cfg, world) == micro


@pytest.mark.parametrize("batch_size,device_batch,world,message", [
    (4096, 96, 8, r"multiple of 8 processes × --device-batch-size 96 = 768"),
    (100, None, 3, r"--batch-size 100 \(the global batch\) must be a multiple of 3 processes")])
def test_batch_not_divisible_is_refused(batch_size, device_batch, world, message):
    cfg = preset("debug", batch_size=batch_size, device_batch_size=device_batch)
    with pytest.raises(ConfigError, match=message):
        micro_batch_size(cfg, world)
