"""One optimisation step and what it is made of: the optimizer with AGC groups, the learning
rate schedule, batch mixing, and the EMA of the weights.

Recipe (docs/architecture.md §8, §11): Nesterov SGD (or AdamW), linear warm-up then cosine to 0,
AGC on the raw gradient before coupled weight decay, label smoothing, EMA of the weights with
the (1 + t)/(10 + t) warm-up.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..errors import ConfigError, TrainingDiverged
from .agc import clip_param_groups_, param_groups


def warmup_steps(cfg, steps_per_epoch):
    return round(cfg.warmup_epochs * steps_per_epoch)


def cosine_progress(step, warmup_steps, total_steps, bend=None):
    """How far the cosine has got at `step` after the warm-up: 0 at its start, 1 at
    `total_steps`. `bend` = (step, progress), at or after the warm-up: where a budgeted run laid
    the rest of its cosine over a new length; from there progress runs on linearly to 1."""
    start, done = bend or (warmup_steps, 0.0)
    return min(done + (1.0 - done) * (step - start) / max(total_steps - start, 1), 1.0)


def step_at_progress(progress, warmup_steps, total_steps, bend=None):
    """The (fractional) step at which `cosine_progress` reaches `progress`; the bend's step if
    the cosine had got that far by then."""
    start, done = bend or (warmup_steps, 0.0)
    if done >= progress:
        return start
    return start + (progress - done) / (1.0 - done) * (total_steps - start)


def lr_at(step, base_lr, warmup_steps, total_steps, bend=None):
    """Linear warm-up from 0 over `warmup_steps`, then cosine decay to 0 at `total_steps`
    (through `bend`, see `cosine_progress`)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = cosine_progress(step, warmup_steps, total_steps, bend)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of weights and buffers; decay min(max, (1 + t)/(10 + t))."""

    def __init__(self, model, max_decay):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay

    @torch.no_grad()
    def update(self, model, step):
        decay = min(self.max_decay, (1.0 + step) / (10.0 + step))
        ema = list(self.module.parameters())
        torch._foreach_lerp_(ema, list(model.parameters()), 1.0 - decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)


def build_optimizer(cfg, model):
    groups = param_groups(model, cfg.weight_decay, cfg.clip_factor or None)
    # The fused kernels update each tensor in one pass; the default multi-tensor path makes
    # several passes over all weights (docs/benchmarks.md: fused SGD).
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)
    raise ConfigError(f"--optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def load_optimizer_state(optimizer, state):
    """`optimizer.load_state_dict`, then every per-parameter buffer laid out like its parameter:
    fused kernels walk parameter, gradient and buffers in memory order, ignoring strides."""
    optimizer.load_state_dict(state)
    for param, buffers in optimizer.state.items():
        for name, value in buffers.items():
            if (torch.is_tensor(value) and value.shape == param.shape
                    and value.stride() != param.stride()):
                buffers[name] = torch.empty_like(param).copy_(value)


def batch_mixer(cfg, num_classes):
    """MixUp on the first half of a batch and CutMix on the second (docs/architecture.md §11),
    or None."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha):
        return None
    mixup = v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes) if cfg.mixup_alpha else None
    cutmix = (v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes) if cfg.cutmix_alpha
              else None)

    def mix(images, labels):
        if mixup is None or cutmix is None:
            return (mixup or cutmix)(images, labels)
        half = len(labels) // 2
        a, b = mixup(images[:half], labels[:half]), cutmix(images[half:], labels[half:])
        return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    return mix


def train_step(model, optimizer, images, labels, cfg, mix=None, step=None):
    """One optimisation step (number `step`, for messages); returns (loss, fraction of units
    AGC clipped, logits).

    `model` may be the `torch.compile`d module; the optimizer holds the parameters either way.
    """
    targets = labels
    if mix is not None:
        images, targets = mix(images, labels)
    with torch.autocast(images.device.type, torch.bfloat16, enabled=cfg.bf16):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
    if not torch.isfinite(loss):
        agc = "a smaller --clip-factor" if cfg.clip_factor else "AGC (--clip-factor 0.01)"
        raise TrainingDiverged(f"loss is {loss.item()} at step {step}: training diverged. Try "
                               f"a lower --lr or {agc}", step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clipped = clip_param_groups_(optimizer, cfg.agc_eps) if cfg.clip_factor else None
    optimizer.step()
    return loss.detach(), clipped, logits.detach()
