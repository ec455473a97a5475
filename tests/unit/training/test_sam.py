"""SAM against the paper's equations, written out here on a tiny model in float64: the ascent on
the batch's first images, ε = ρ g_a/‖g_a‖, the descent gradient at w + ε, AGC at w, SGD from w."""

import copy

import pytest
import torch
import torch.nn.functional as F

from normfree.errors import ConfigError
from normfree import create_model
from normfree.training.agc import clip_param_groups_
from normfree.training.optim import make_optimizer, train_step
from normfree.training.sam import SAM

RHO, FRACTION = 0.05, 0.25


def tiny_model():
    torch.manual_seed(0)
    return create_model("nfnet_tiny", 4, dropout=0.0, stochastic_depth=0.0).double()


def batch(count=8):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(count, 3, 16, 16, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (count,), generator=g))


def optimizer_for(model):
    return make_optimizer(model, "sgd", lr=0.5, momentum=0.9, weight_decay=1e-3,
                          clip_factor=0.01)


def gradient(model, images, labels):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels, label_smoothing=0.1).backward()
    return [p.grad.clone() for p in model.parameters()]


def paper_sam_update(model, optimizer, images, labels):
    """The equations, step by step, with nothing of normfree's step but AGC and SGD."""
    weights = [p.detach().clone() for p in model.parameters()]
    ascent = gradient(model, images[:2], labels[:2])  # 25 % of 8 images
    norm = torch.sqrt(sum((g ** 2).sum() for g in ascent))
    with torch.no_grad():
        for p, g in zip(model.parameters(), ascent):
            p.add_(RHO * g / norm)
    descent = gradient(model, images, labels)
    with torch.no_grad():
        for p, w, g in zip(model.parameters(), weights, descent):
            p.copy_(w)
            p.grad = g
    clip_param_groups_(optimizer)
    optimizer.step()


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("micro_batch", [None, 2])
def test_sam_step_follows_the_papers_equations(micro_batch):
    model = tiny_model()
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    ours_opt, theirs_opt = optimizer_for(ours), optimizer_for(theirs)
    images, labels = batch()
    sam = SAM(RHO, FRACTION)
    for _ in range(3):
        train_step(ours, ours_opt, images, labels, label_smoothing=0.1, sam=sam,
                   micro_batch=micro_batch)
        paper_sam_update(theirs, theirs_opt, images, labels)
    difference = (flat(ours) - flat(theirs)).abs().max() / flat(theirs).abs().max()
    assert difference.item() < 1e-10
    plain = copy.deepcopy(model)
    plain_opt = optimizer_for(plain)
    for _ in range(3):
        train_step(plain, plain_opt, images, labels, label_smoothing=0.1)
    assert (flat(plain) - flat(ours)).abs().max() > 1e-6  # SAM changed the update


def test_weights_return_exactly_after_the_ascent():
    model = tiny_model()
    before = flat(model)
    images, labels = batch()
    gradient(model, images, labels)
    sam = SAM(RHO, FRACTION)
    assert sam.ascend(model.parameters()) > 0
    assert (flat(model) - before).abs().max() > 0
    sam.restore()
    assert torch.equal(flat(model), before)
    assert all(p.grad is None for p in model.parameters())


def test_sam_with_fp16_loss_scaling_trains():
    model = create_model("nfnet_tiny", 4, dropout=0.0, stochastic_depth=0.0)
    optimizer = make_optimizer(model, lr=0.05, clip_factor=0.05)
    images, labels = batch()
    scaler = torch.amp.GradScaler("cpu")
    losses = [train_step(model, optimizer, images.float(), labels, precision="fp16",
                         scaler=scaler, sam=SAM(RHO, FRACTION)).loss.item() for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]


FRACTION_RULE = r"--sam-fraction must be in \(0, 1\]"


@pytest.mark.parametrize("rho,fraction,message", [(0.05, 0.0, FRACTION_RULE),
                                                  (0.05, 1.5, FRACTION_RULE),
                                                  (0.0, 0.2, "--sam-rho must be positive")])
def test_bad_settings_are_refused(rho, fraction, message):
    with pytest.raises(ConfigError, match=message):
        SAM(rho, fraction)


def test_ascent_uses_a_fraction_of_the_batch_and_at_least_one_image():
    sam = SAM(0.05, 0.2)
    assert sam.ascent_size(4096 // 8) == 102 and sam.ascent_size(2) == 1
