"""One optimisation step and what it is made of: the optimizer with AGC groups, the learning
rate schedule, batch mixing, and the EMA of the weights.

Recipe (docs/architecture.md §8, §11): Nesterov SGD (or AdamW), linear warm-up then cosine to 0,
AGC on the raw gradient before coupled weight decay, label smoothing, EMA of the weights with
the (1 + t)/(10 + t) warm-up.
"""

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..errors import ConfigError, TrainingDiverged
from ..runtime import autocast
from .config import peak_lr
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
    """The optimizer a `TrainConfig` asks for, at its peak learning rate."""
    return make_optimizer(model, cfg.optimizer, peak_lr(cfg), cfg.momentum, cfg.weight_decay,
                          cfg.clip_factor, cfg.agc_eps)


def make_optimizer(model, name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, clip_factor=None,
                   agc_eps=1e-3):
    """Nesterov SGD or AdamW over AGC's parameter groups (`clip_factor` None or 0: no AGC)."""
    groups = param_groups(model, weight_decay, clip_factor or None, agc_eps)
    # The fused kernels update each tensor in one pass; the default multi-tensor path makes
    # several passes over all weights (docs/benchmarks.md: fused SGD).
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    raise ConfigError(f"--optimizer must be 'sgd' or 'adamw', got {name!r}")


def load_optimizer_state(optimizer, state):
    """`optimizer.load_state_dict`, then every per-parameter buffer laid out like its parameter:
    fused kernels walk parameter, gradient and buffers in memory order, ignoring strides. AGC's
    settings stay the config's (checkpoints before `agc_eps` moved into the groups lack it)."""
    clipping = [{k: g[k] for k in ("clip_factor", "agc_eps") if k in g}
                for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, clipping):
        group.update(settings)
    for param, buffers in optimizer.state.items():
        for name, value in buffers.items():
            if (torch.is_tensor(value) and value.shape == param.shape
                    and value.stride() != param.stride()):
                buffers[name] = torch.empty_like(param).copy_(value)


def batch_mixer(augmentation, num_classes):
    """MixUp on the first half of a batch and CutMix on the second (docs/architecture.md §11),
    as the data's `AugmentSpec` asks, or None: also when the reference pipeline mixes in the
    loader instead."""
    alphas = augmentation.mixup_alpha, augmentation.cutmix_alpha
    if augmentation.pipeline == "reference" or not any(alphas):
        return None
    mixup, cutmix = (kind(alpha=alpha, num_classes=num_classes) if alpha else None
                     for kind, alpha in zip((v2.MixUp, v2.CutMix), alphas))

    def mix(images, labels):
        if mixup is None or cutmix is None:
            return (mixup or cutmix)(images, labels)
        half = len(labels) // 2
        a, b = mixup(images[:half], labels[:half]), cutmix(images[half:], labels[half:])
        return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    return mix


@dataclass
class StepResult:
    """What one update did: the mean loss and the logits over this process's part of the global
    batch, the fraction of units AGC clipped (None without AGC), and whether fp16 loss scaling
    skipped the update (a gradient overflowed)."""

    loss: torch.Tensor
    logits: torch.Tensor
    clipped: Optional[torch.Tensor]
    skipped: bool = False


def train_step(model, optimizer, images, labels, *, micro_batch=None, prepare=None,
               label_smoothing=0.0, precision="fp32", scaler=None, mix=None,
               no_sync=contextlib.nullcontext, sam=None, step=None):
    """One optimizer update on this process's part of a global batch (`images`, `labels`).

    The batch runs through the model `micro_batch` images at a time (all at once by default),
    `prepare` (e.g. to the device, normalised) applied to each; their gradients accumulate into
    that of the whole batch's mean loss. Under DDP `no_sync` (the module's) keeps all but the
    last micro-batch from all-reducing, so AGC, like the update, sees the global-batch gradient
    once. With fp16, `scaler` (a `GradScaler`) scales the loss, and AGC clips the unscaled
    gradient. With `sam` (a `SAM`), the descent gradient is taken at the ascent point of the
    batch's first images, unsynchronised, and AGC clips it at the unperturbed weights. `model`
    may be the `torch.compile`d module; the optimizer holds the parameters either way. `step`
    numbers the update in messages.
    """
    passes = dict(micro_batch=micro_batch or len(labels), prepare=prepare,
                  label_smoothing=label_smoothing, precision=precision, scaler=scaler, mix=mix)
    optimizer.zero_grad(set_to_none=True)
    if sam is not None:
        ascent = sam.ascent_size(len(labels))
        accumulate(model, images[:ascent], labels[:ascent], no_sync=no_sync, sync=False,
                   **passes)
        sam.ascend(p for group in optimizer.param_groups for p in group["params"])
    total, logits = accumulate(model, images, labels, no_sync=no_sync, **passes)
    if sam is not None:
        sam.restore()
    if scaler is None and not torch.isfinite(total):
        clipping = any(g.get("clip_factor") for g in optimizer.param_groups)
        agc = "a smaller --clip-factor" if clipping else "AGC (--clip-factor 0.01)"
        raise TrainingDiverged(f"loss is {total.item()} at step {step}: training diverged. Try "
                               f"a lower --lr or {agc}", step)
    if scaler is not None:
        scaler.unscale_(optimizer)
    clipped = clip_param_groups_(optimizer)
    skipped = False
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < scale  # an inf/NaN gradient: no update, a smaller scale
    else:
        optimizer.step()
    return StepResult(total, logits, clipped, skipped)


def accumulate(model, images, labels, *, micro_batch, prepare, label_smoothing, precision,
               scaler, mix, no_sync, sync=True):
    """Back-propagate the mean loss over `images` in micro-batches, adding to `.grad`; returns
    (the mean loss, the logits). DDP all-reduces with the last micro-batch only, or, without
    `sync`, with none."""
    count, total, all_logits = len(labels), 0.0, []
    chunks = list(zip(images.split(micro_batch), labels.split(micro_batch)))
    for i, (chunk, chunk_labels) in enumerate(chunks):
        chunk = prepare(chunk) if prepare else chunk
        chunk_labels = chunk_labels.to(chunk.device, non_blocking=True)
        targets = chunk_labels
        if mix is not None:
            chunk, targets = mix(chunk, chunk_labels)
        last = sync and i == len(chunks) - 1
        with contextlib.nullcontext() if last else no_sync():
            with autocast(chunk.device, precision):
                logits = model(chunk)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp16/bf16
            loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            loss = loss * (len(chunk_labels) / count)  # the whole batch's mean
            (scaler.scale(loss) if scaler else loss).backward()
        total = total + loss.detach()
        all_logits.append(logits.detach())
    return total, torch.cat(all_logits)
