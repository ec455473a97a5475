"""The training loop: `train(cfg)` reads top to bottom; the helpers are pure or nearly so.

Recipe (SPEC §8, §11): Nesterov SGD (or AdamW), linear warmup then cosine to 0, AGC on the raw
gradient before coupled weight decay, label smoothing, EMA of the weights with the
(1 + t)/(10 + t) warm-up, evaluated next to the raw weights; the validation split picks which
of the two is reported on the test set.
"""

import copy
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from tqdm import tqdm

from .agc import clip_param_groups_, param_groups
from .checkpoint import (CheckpointError, export_weights, load_checkpoint, save_checkpoint,
                         save_json)
from .config import TrainConfig, from_dict, to_dict
from .data import Normalize, make_data
from .report import MetricsLog, machine_info, plot_curves
from .zoo import create_model


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def lr_at(step, base_lr, warmup_steps, total_steps):
    """Linear warm-up from 0 over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


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
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def batch_mixer(cfg, num_classes):
    """MixUp on the first half of a batch and CutMix on the second (SPEC §11), or None."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha):
        return None
    mixup = v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes) if cfg.mixup_alpha else None
    cutmix = v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes) \
        if cfg.cutmix_alpha else None

    def mix(images, labels):
        if mixup is None or cutmix is None:
            return (mixup or cutmix)(images, labels)
        half = len(labels) // 2
        a, b = mixup(images[:half], labels[:half]), cutmix(images[half:], labels[half:])
        return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    return mix


def train_step(model, optimizer, images, labels, cfg, mix=None):
    """One optimisation step; returns (loss, fraction of units AGC clipped, logits)."""
    targets = labels
    if mix is not None:
        images, targets = mix(images, labels)
    with torch.autocast(images.device.type, torch.bfloat16, enabled=cfg.bf16):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss is {loss.item()}: training diverged. Try a lower --lr or "
                               "a smaller --clip-factor; the last good checkpoint is kept.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clipped = clip_param_groups_(optimizer, cfg.agc_eps) if cfg.clip_factor else None
    optimizer.step()
    return loss.detach(), clipped, logits.detach()


@torch.no_grad()
def evaluate(model, batches, normalize, cfg, device):
    """Top-1 and top-5 accuracy (%) and mean cross-entropy over `batches`.

    With `cfg.tta_flip`, logits are averaged over each image and its mirror image.
    """
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss = count = 0
    for images, labels in batches:
        images, labels = normalize(images.to(device)), labels.to(device)
        images = images.contiguous(memory_format=_memory_format(cfg))
        with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16):
            logits = model(images).float()
            if cfg.tta_flip:
                logits = (logits + model(images.flip(3)).float()) / 2
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == labels).sum().item()
        correct5 += (top5 == labels[:, None]).any(dim=1).sum().item()
        count += len(labels)
    model.train(was_training)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count,
            "loss": loss / count}


def bf16_available(device):
    """bf16 autocast pays off on CUDA GPUs that have it and on CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def model_for(cfg, data):
    """The run's model: `cfg.model` sized for the data, with the config's regularisation."""
    overrides = {k: getattr(cfg, k) for k in ("dropout", "stochastic_depth")
                 if getattr(cfg, k) is not None}
    return create_model(cfg.model, len(data.classes), in_chans=data.in_chans, **overrides)


def _memory_format(cfg):
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _prepare_out_dir(cfg):
    out = Path(cfg.out_dir or f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    checkpoint = out / "checkpoint.pt"
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        raise FileExistsError(f"output directory {out} already exists: pass --resume to "
                              "continue that run, or choose another --out-dir")
    if cfg.resume and not checkpoint.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {checkpoint}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(cfg: TrainConfig):
    """Train, select raw vs EMA weights on the validation split, report on the test set."""
    started = time.time()
    out = _prepare_out_dir(cfg)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.bf16 is None:
        cfg = replace(cfg, bf16=bf16_available(device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = make_data(cfg)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed and nothing else
    model = model_for(cfg, data)
    model.to(device, memory_format=_memory_format(cfg))
    normalize = Normalize(data.mean, data.std).to(device)
    optimizer = build_optimizer(cfg, model)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    mix = batch_mixer(cfg, len(data.classes))
    steps_per_epoch = len(data.train)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    step, start_epoch, selected = 0, 0, None
    if cfg.resume:
        state = load_checkpoint(out / "checkpoint.pt", map_location=device)
        if _resumable(cfg, state["config"]) != cfg:
            raise CheckpointError(f"{out / 'checkpoint.pt'} was written with another config; "
                                  "resume with the same flags")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        step, start_epoch, selected = state["step"], state["epoch"], state["selected"]
    print(f"normfree train: {cfg}\n  {sum(p.numel() for p in model.parameters()):,} params, "
          f"{steps_per_epoch} steps/epoch, output in {out}", flush=True)
    save_json(out / "config.json", to_dict(cfg))
    log = MetricsLog(out, cfg.tensorboard)
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 100003 + epoch)  # per-epoch seeds make resume exact
        if hasattr(data.train, "generator"):
            data.train.generator.manual_seed(cfg.seed * 100003 + epoch)
        model.train()
        epoch_start, loss_sum, correct, seen, clipped_sum = time.time(), 0.0, 0, 0, 0.0
        bar = tqdm(data.train, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if cfg.progress else True, dynamic_ncols=True)
        for images, labels in bar:
            lr = lr_at(step, cfg.lr, warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = normalize(images.to(device, non_blocking=True))
            images = images.contiguous(memory_format=_memory_format(cfg))
            labels = labels.to(device, non_blocking=True)
            loss, clipped, logits = train_step(model, optimizer, images, labels, cfg, mix)
            step += 1
            if ema is not None:
                ema.update(model, step)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            clipped_sum += 0.0 if clipped is None else clipped.item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.3g}")
        seconds = time.time() - epoch_start
        val = evaluate(model, data.val, normalize, cfg, device)
        val_ema = evaluate(ema.module, data.val, normalize, cfg, device) if ema else None
        row = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / seen,
               "train_acc": 100.0 * correct / seen, "val_loss": val["loss"],
               "val_acc": val["top1"], "val_acc_ema": val_ema["top1"] if ema else None,
               "lr": lr, "img_per_s": seen / seconds, "agc_clipped": clipped_sum / len(bar),
               "epoch_seconds": seconds}
        log.append(row)
        print(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
              f"train {row['train_acc']:.2f}%  val {val['top1']:.2f}%"
              + (f"  val(EMA) {val_ema['top1']:.2f}%" if ema else "")
              + f"  {row['img_per_s']:.0f} img/s  lr {lr:.4f}  "
              f"AGC clipped {100 * row['agc_clipped']:.1f}% of units  ({seconds:.0f}s)",
              flush=True)
        candidates = [("raw", val["top1"])] + ([("ema", val_ema["top1"])] if ema else [])
        selected = max(candidates, key=lambda c: c[1])  # raw or EMA, by validation top-1
        save_checkpoint(out / "checkpoint.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.module.state_dict() if ema else None, "step": step,
            "epoch": epoch + 1, "selected": selected, "config": to_dict(cfg),
            "model_name": cfg.model, "classes": list(data.classes)})
    log.close()
    chosen = ema.module if ema is not None and selected and selected[0] == "ema" else model
    test = evaluate(chosen, data.test, normalize, cfg, device)
    plot_curves(out / "metrics.csv", out / "curves.png")
    export_weights(chosen, out / "model.safetensors",
                   {"model": cfg.model, "classes": list(data.classes), "config": to_dict(cfg)})
    results = {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
               "weights": selected[0] if selected else "raw",
               "val_top1": selected[1] if selected else None,
               "epochs": cfg.epochs, "steps": step, "train_seconds": time.time() - started,
               "seed": cfg.seed, "machine": machine_info(), "out_dir": str(out)}
    save_json(out / "results.json", results)
    print(f"test top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  "
          f"({results['weights']} weights, {results['train_seconds'] / 60:.1f} min)\n"
          f"artefacts: {out}/ (results.json, metrics.csv, curves.png, checkpoint.pt, "
          "model.safetensors)", flush=True)
    return results


def _resumable(cfg, saved):
    """The saved config with this run's execution-only fields, for comparing on resume."""
    keep = {"resume", "progress", "tensorboard", "threads", "out_dir", "device", "bf16"}
    return from_dict({**saved, **{k: getattr(cfg, k) for k in keep}})
