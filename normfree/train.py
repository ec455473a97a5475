"""The training loop: `train(cfg)` reads top to bottom; the helpers are pure or nearly so.

Recipe (SPEC §8, §11): Nesterov SGD (or AdamW), linear warmup then cosine to 0, AGC on the raw
gradient before coupled weight decay, label smoothing, EMA of the weights with the
(1 + t)/(10 + t) warm-up, evaluated next to the raw weights; the validation split picks which
of the two is reported on the test set.
"""

import copy
import math
import signal
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.transforms import v2
from tqdm import tqdm

from . import distributed
from .agc import clip_param_groups_, param_groups
from .checkpoint import (CheckpointError, check_layout, export_weights, layout_of,
                         load_checkpoint, save_checkpoint, save_json)
from .config import TrainConfig, to_dict
from .data import Normalize, make_data
from .report import MetricsLog, machine_info, plot_curves
from .runs import (compiled, freeze, initialise_from, model_for, prepare_out_dir,
                   preprocessing_of, resolve_config, resumable_config)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite at optimisation step `.step` (counting from 1)."""

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


class TrainingStopped(RuntimeError):
    """A signal stopped training after a checkpoint; `.signal` names it."""

    def __init__(self, message, signal_name):
        super().__init__(message)
        self.signal = signal_name


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
    # The fused kernels update each tensor in one pass; the default multi-tensor path makes
    # several passes over all weights (NFNet-F0 on 2 CPU threads: 51 → 30 ms a step).
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def load_optimizer_state(optimizer, state):
    """`optimizer.load_state_dict`, then every per-parameter buffer laid out like its parameter:
    fused kernels walk parameter, gradient and buffers in memory order, ignoring strides."""
    optimizer.load_state_dict(state)
    for param, buffers in optimizer.state.items():
        for name, value in buffers.items():
            if torch.is_tensor(value) and value.shape == param.shape \
                    and value.stride() != param.stride():
                buffers[name] = torch.empty_like(param).copy_(value)


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
        raise TrainingDiverged(f"loss is {loss.item()} at step {step}: training diverged. Try "
                               "a lower --lr or a smaller --clip-factor; the last good "
                               "checkpoint is kept.", step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clipped = clip_param_groups_(optimizer, cfg.agc_eps) if cfg.clip_factor else None
    optimizer.step()
    return loss.detach(), clipped, logits.detach()


def top1_top5_hits(logits, labels):
    """How many labels are the top prediction, and how many are among the top 5."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return ((top5[:, 0] == labels).sum().item(),
            (top5 == labels[:, None]).any(dim=1).sum().item())


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
        hits1, hits5 = top1_top5_hits(logits, labels)
        correct1, correct5 = correct1 + hits1, correct5 + hits5
        count += len(labels)
    model.train(was_training)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count,
            "loss": loss / count}


class EpochTally:
    """Running sums of one epoch's training metrics (checkpointed mid-epoch)."""

    def __init__(self, batches=0, seen=0, correct=0, loss_sum=0.0, clipped_sum=0.0,
                 seconds=0.0):
        self.batches, self.seen, self.correct = batches, seen, correct
        self.loss_sum, self.clipped_sum, self.seconds = loss_sum, clipped_sum, seconds
        self._since = time.time()

    def add(self, loss, logits, labels, clipped):
        self.batches += 1
        self.seen += len(labels)
        self.correct += (logits.argmax(1) == labels).sum().item()
        self.loss_sum += loss.item() * len(labels)
        self.clipped_sum += 0.0 if clipped is None else clipped.item()
        now = time.time()
        self.seconds, self._since = self.seconds + now - self._since, now

    def state(self):
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def summed(self, procs, device):
        """The tally over all processes: images and losses add up; the AGC fraction and the
        time are this process's (every process clips the same all-reduced gradient)."""
        seen, correct, loss_sum = distributed.sum_across(
            procs, [self.seen, self.correct, self.loss_sum], device)
        return EpochTally(self.batches, int(seen), int(correct), loss_sum, self.clipped_sum,
                          self.seconds)

    def summary(self):
        return {"train_loss": self.loss_sum / self.seen,
                "train_acc": 100.0 * self.correct / self.seen,
                "img_per_s": self.seen / self.seconds, "agc_clipped": self.clipped_sum /
                self.batches, "epoch_seconds": self.seconds}


def rng_states():
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class StopOnSignal:
    """SIGTERM or SIGINT during training: finish the step, checkpoint, then stop."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.signal, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def requested(self, procs, device):
        """The signal's name once any process got one (a collective under DDP), else None."""
        if not procs.distributed:
            return self.signal
        got = distributed.sum_across(procs, [0.0 if self.signal is None else 1.0], device)[0]
        return (self.signal or "a signal to another process") if got else None

    def _handle(self, number, frame):
        if self.signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signal.Signals(number).name

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def select_weights(val, val_ema, has_ema):
    """("raw" or "ema", validation top-1): the better on validation, or without a validation
    split the EMA when there is one."""
    if val is None:
        return ("ema" if has_ema else "raw", None)
    candidates = [("raw", val["top1"])] + ([("ema", val_ema["top1"])] if val_ema else [])
    return max(candidates, key=lambda c: c[1])


def _memory_format(cfg):
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def train(cfg: TrainConfig):
    """Train, select raw vs EMA weights on the validation split, report on the test set.

    Under torchrun each process trains its part of every global batch (`distributed.py`);
    rank 0 returns the results, the other ranks None.
    """
    procs, device = distributed.start(cfg.device)
    try:
        result = _train(cfg, procs, device)
    except TrainingStopped:  # every process stopped at the same step: leave together
        distributed.stop(procs)
        raise
    # other errors leave without a barrier (peers may be waiting in a collective); torchrun
    # then stops the other processes
    distributed.stop(procs)
    return result


def _train(cfg, procs, device):
    started = time.time()
    say = print if procs.main else (lambda *args, **kwargs: None)
    out = Path(distributed.gather(procs, str(prepare_out_dir(cfg)) if procs.main else None)[0])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resuming = cfg.resume and (out / "checkpoint.pt").is_file()
    state = load_checkpoint(out / "checkpoint.pt", map_location=device) if resuming else None
    cfg, source = resolve_config(cfg, device, state and state["config"])
    data = make_data(cfg)
    data.train.shard(procs.rank, procs.world_size)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed and nothing else
    model = model_for(cfg, data)
    if source is not None:
        initialise_from(model, source, data.classes)
    freeze(model, cfg.freeze)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    if procs.distributed and device.type == "cuda":  # SyncBatchNorm runs on GPUs only
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=_memory_format(cfg))
    normalize = Normalize(data.mean, data.std).to(device)
    optimizer = build_optimizer(cfg, model)
    # DDP averages the gradients during backward, so AGC clips the global-batch gradient
    forward = compiled(DistributedDataParallel(model) if procs.distributed else model, cfg, device)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    mix = batch_mixer(cfg, len(data.classes))
    steps_per_epoch = len(data.train)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    step, start_epoch, selected = 0, 0, None
    if state is not None:
        if resumable_config(cfg, state["config"]) != cfg:
            raise CheckpointError(f"{out / 'checkpoint.pt'} was written with another config; "
                                  "resume with the same flags")
        check_layout(model, state.get("layout"), out / "checkpoint.pt")
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        step, start_epoch, selected = state["step"], state["epoch"], state["selected"]
    say(f"normfree train: {cfg}\n  {sum(p.numel() for p in model.parameters()):,} params, "
        f"{steps_per_epoch} steps/epoch" + (f" over {procs.world_size} processes"
                                             if procs.distributed else "")
        + f", output in {out}", flush=True)
    log = None
    if procs.main:
        save_json(out / "config.json", to_dict(cfg))
        log = MetricsLog(out, cfg.tensorboard, keep_epochs=start_epoch)

    def checkpoint(epoch, tally=None):  # `tally`: the unfinished epoch's, to resume inside it
        rng = distributed.gather(procs, rng_states()) if tally else None  # every rank's
        tally = tally and tally.summed(procs, device)
        if procs.main:
            save_checkpoint(out / "checkpoint.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.module.state_dict() if ema else None, "step": step, "epoch": epoch,
                "tally": tally and tally.state(), "rng": rng, "selected": selected,
                "config": to_dict(cfg), "model_name": cfg.model, "layout": layout_of(model),
                "classes": list(data.classes)})

    with StopOnSignal() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            # per-epoch seeds make resume exact; the data order is global, the rest per rank
            torch.manual_seed(cfg.seed * 100003 + epoch + 1000003 * procs.rank)
            data.train.generator.manual_seed(cfg.seed * 100003 + epoch)
            tally = EpochTally()
            if epoch == start_epoch and state is not None and state.get("tally"):
                saved = state["tally"]  # resuming inside this epoch; sums of all processes
                tally = EpochTally(**saved) if procs.main else EpochTally(saved["batches"])
                if len(state["rng"]) == procs.world_size:  # else: not bit-exact, same order
                    set_rng_states(state["rng"][procs.rank])
            model.train()
            lr = lr_at(step, cfg.lr, warmup_steps, total_steps)
            bar = tqdm(data.train.iterate(tally.batches), total=steps_per_epoch,
                       initial=tally.batches, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       leave=False, disable=None if cfg.progress and procs.main else True,
                       dynamic_ncols=True)
            for images, labels in bar:
                lr = lr_at(step, cfg.lr, warmup_steps, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = normalize(images.to(device, non_blocking=True))
                images = images.contiguous(memory_format=_memory_format(cfg))
                labels = labels.to(device, non_blocking=True)
                loss, clipped, logits = train_step(forward, optimizer, images, labels, cfg, mix,
                                                  step + 1)
                step += 1
                if ema is not None:
                    ema.update(model, step)
                tally.add(loss, logits, labels, clipped)
                bar.set_postfix(loss=f"{tally.loss_sum / tally.seen:.3f}", lr=f"{lr:.3g}")
                stopping = stop.requested(procs, device)  # all ranks agree on the step
                if stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                                and tally.batches < steps_per_epoch):
                    checkpoint(epoch, tally)
                if stopping:
                    raise TrainingStopped(f"stopped by {stopping} at step {step}; the "
                                          f"checkpoint in {out} is saved: continue with "
                                          "--resume", stopping)
            tally = tally.summed(procs, device)
            if procs.main:
                validate = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
                val = evaluate(model, data.val, normalize, cfg, device) \
                    if data.val and validate else None
                val_ema = evaluate(ema.module, data.val, normalize, cfg, device) \
                    if data.val and validate and ema else None
                row = {"epoch": epoch + 1, "step": step, **tally.summary(), "lr": lr,
                       "val_loss": val and val["loss"], "val_acc": val and val["top1"],
                       "val_acc_ema": val_ema and val_ema["top1"]}
                say(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                    f"train {row['train_acc']:.2f}%"
                    + (f"  val {val['top1']:.2f}%" if val else "")
                    + (f"  val(EMA) {val_ema['top1']:.2f}%" if val_ema else "")
                    + f"  {row['img_per_s']:.0f} img/s  lr {lr:.4f}  "
                    f"AGC clipped {100 * row['agc_clipped']:.1f}% of units  "
                    f"({row['epoch_seconds']:.0f}s)", flush=True)
                if validate:  # the last epoch always is: the final choice is made there
                    selected = select_weights(val, val_ema, ema is not None)
                checkpoint(epoch + 1)
                log.append(row)  # after the checkpoint: a resumed run rewrites rows it redoes
    if not procs.main:
        return None
    log.close()
    chosen = ema.module if ema is not None and selected and selected[0] == "ema" else model
    test = evaluate(chosen, data.test, normalize, cfg, device)
    plot_curves(out / "metrics.csv", out / "curves.png")
    export_weights(chosen, out / "model.safetensors",
                   {"model": cfg.model, "numerics": cfg.numerics or "deepmind",
                    "classes": list(data.classes), "preprocessing": preprocessing_of(cfg, data),
                    "config": to_dict(cfg)})
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
