"""On a CUDA GPU (skipped without one; scripts/gpu_check.sh runs them): the precision the GPU
really has, fp16 loss scaling and bf16 steps, accumulation, and a training run's defaults."""

import json

import pytest
import torch

from normfree import runtime
from normfree.cli import main
from normfree.nn.variants import get_config
from normfree import create_model
from normfree.training.optim import make_optimizer, train_step

pytestmark = pytest.mark.cuda
GPU = torch.device("cuda")


def tiny(dtype=torch.float32):
    torch.manual_seed(0)
    return create_model("nfnet_tiny", 4, dropout=0.0, stochastic_depth=0.0).to(GPU, dtype)


def batch(dtype=torch.float32, count=8):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(count, 3, 16, 16, generator=g, dtype=dtype)
    return images.to(GPU), torch.randint(0, 4, (count,), generator=g).to(GPU)


def test_bf16_is_reported_only_where_it_is_native():
    assert runtime.bf16_available(GPU) == (torch.cuda.get_device_capability() >= (8, 0))
    assert runtime.default_precision(GPU) in ("bf16", "fp16")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_steps_train(precision):
    if precision == "bf16" and not runtime.bf16_available(GPU):
        pytest.skip("this GPU has no native bf16")
    model = tiny()
    optimizer = make_optimizer(model, lr=0.05, clip_factor=0.05)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    images, labels = batch()
    losses = [train_step(model, optimizer, images, labels, precision=precision, scaler=scaler)
              .loss.item() for _ in range(20)]
    assert losses[-1] < 0.7 * losses[0]


def test_fp16_overflow_skips_the_update():
    model = tiny()
    optimizer = make_optimizer(model, lr=0.05, clip_factor=0.05)
    scaler = torch.amp.GradScaler("cuda")
    images, labels = batch()
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, optimizer, images * 1e6, labels, precision="fp16", scaler=scaler)
    assert result.skipped
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_micro_batches_equal_the_whole_batch_in_float64():
    torch.use_deterministic_algorithms(True, warn_only=True)
    weights = []
    for micro_batch in (None, 2):
        model = tiny(torch.float64)
        optimizer = make_optimizer(model, lr=0.5, clip_factor=1e-3)
        train_step(model, optimizer, *batch(torch.float64), micro_batch=micro_batch)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert ((weights[1] - weights[0]).abs().max() / weights[0].abs().max()).item() < 1e-6


def test_training_run_on_the_gpu(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "debug", "--device", "cuda", "--precision", "fp16",
                 "--device-batch-size", "8", "--out-dir", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert config["precision"] == "fp16" and results["skipped_steps"] >= 0
    # channels_last on CUDA only for models without grouped convolutions
    assert config["channels_last"] == (get_config("nfnet_tiny").group_width is None)
