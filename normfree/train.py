"""The training loop: `train(cfg)` reads top to bottom; the helpers are pure or nearly so.

Recipe (SPEC §8, §11): Nesterov SGD (or AdamW), linear warmup then cosine to 0, AGC on the raw
gradient before coupled weight decay, label smoothing, EMA of the weights with the
(1 + t)/(10 + t) warm-up, evaluated next to the raw weights; the validation split picks which
of the two is reported on the test set.
"""

import copy
import math
import shutil
import signal
import threading
import time
import warnings
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
    """One optimisation step; returns (loss, fraction of units AGC clipped, logits).

    `model` may be the `torch.compile`d module; the optimizer holds the parameters either way.
    """
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
    return create_model(cfg.model, len(data.classes), numerics=cfg.numerics or "deepmind",
                        in_chans=data.in_chans, **overrides)


def resolve_config(cfg, device, saved=None):
    """Fill the automatic (None) fields, so the saved config replays the run exactly; when
    resuming, as the `saved` config resolved them.

    Returns the config and, with `init_from` on a fresh run, the loaded source model.
    """
    from .pretrained import load_pretrained
    from .zoo import get_config
    source = None
    if saved is not None:
        cfg = replace(cfg, **{k: saved[k] for k in ("model", "numerics", "image_size")
                              if getattr(cfg, k) is None and k in saved})
    if cfg.bf16 is None:
        cfg = replace(cfg, bf16=bf16_available(device))
    if cfg.init_from and not cfg.resume:
        source = load_pretrained(cfg.init_from, cfg.model, device)
        cfg = replace(cfg, model=source.name, numerics=cfg.numerics or source.numerics)
    if cfg.model is None:
        raise ValueError("--model: none given and no --init-from weights to take it from")
    if cfg.image_size is None:
        cfg = replace(cfg, image_size=get_config(cfg.model).train_size)
    return cfg, source


def initialise_from(model, source, classes):
    """Copy `source`'s weights into `model`; keep its classifier only for the same classes."""
    state = source.model.state_dict()
    if tuple(source.classes) != tuple(classes):
        state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    mine = model.state_dict()
    misfit = [k for k in mine if k in state and state[k].shape != mine[k].shape]
    if misfit or set(state) - set(mine):
        raise CheckpointError(f"--init-from {source.name} weights do not fit the run's model "
                              f"(mis-shaped: {misfit[:4]}; is --in-chans or --model different?)")
    model.load_state_dict(state, strict=False)


def freeze(model, names):
    """`requires_grad_(False)` on the comma-separated modules `names` (e.g. "stem,stages.0")."""
    for name in filter(None, (n.strip() for n in (names or "").split(","))):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            top = [n for n, _ in model.named_children()]
            raise ValueError(f"--freeze: the model has no module {name!r}; its top-level "
                             f"modules are {top} (stages are stages.0, stages.1, ...)") from None
        module.requires_grad_(False)


def compiled(model, cfg, device):
    """`torch.compile(model)` when `cfg.compile` asks and the backend can run here."""
    if not cfg.compile:
        return model
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        warnings.warn("--compile: no C++ compiler on PATH (inductor needs one on CPU); "
                      "training without torch.compile", stacklevel=2)
        return model
    return torch.compile(model)


def preprocessing_of(cfg, data):
    """How `predict`/`eval --weights` must prepare images for this run's model."""
    from .pretrained import reference_preprocessing
    pre = reference_preprocessing(data.image_size, data.in_chans, data.mean, data.std)
    if cfg.dataset != "folder":  # in-memory datasets are already at their size
        pre.update(resize=data.image_size, interpolation="bilinear")
    return pre


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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = load_checkpoint(out / "checkpoint.pt", map_location=device) if cfg.resume else None
    cfg, source = resolve_config(cfg, device, state and state["config"])
    data = make_data(cfg)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed and nothing else
    model = model_for(cfg, data)
    if source is not None:
        initialise_from(model, source, data.classes)
    freeze(model, cfg.freeze)
    model.to(device, memory_format=_memory_format(cfg))
    normalize = Normalize(data.mean, data.std).to(device)
    optimizer = build_optimizer(cfg, model)
    forward = compiled(model, cfg, device)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    mix = batch_mixer(cfg, len(data.classes))
    steps_per_epoch = len(data.train)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    step, start_epoch, selected = 0, 0, None
    if state is not None:
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
    log = MetricsLog(out, cfg.tensorboard, keep_epochs=start_epoch)

    def checkpoint(epoch, tally=None):  # `tally`: the unfinished epoch's, to resume inside it
        save_checkpoint(out / "checkpoint.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.module.state_dict() if ema else None, "step": step, "epoch": epoch,
            "tally": tally and tally.state(), "rng": rng_states() if tally else None,
            "selected": selected, "config": to_dict(cfg), "model_name": cfg.model,
            "classes": list(data.classes)})

    with StopOnSignal() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(cfg.seed * 100003 + epoch)  # per-epoch seeds make resume exact
            data.train.generator.manual_seed(cfg.seed * 100003 + epoch)
            tally = EpochTally()
            if epoch == start_epoch and state is not None and state.get("tally"):
                tally = EpochTally(**state["tally"])  # resuming inside this epoch
                set_rng_states(state["rng"])
            model.train()
            lr = lr_at(step, cfg.lr, warmup_steps, total_steps)
            bar = tqdm(data.train.iterate(tally.batches), total=steps_per_epoch,
                       initial=tally.batches, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       leave=False, disable=None if cfg.progress else True, dynamic_ncols=True)
            for images, labels in bar:
                lr = lr_at(step, cfg.lr, warmup_steps, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = normalize(images.to(device, non_blocking=True))
                images = images.contiguous(memory_format=_memory_format(cfg))
                labels = labels.to(device, non_blocking=True)
                loss, clipped, logits = train_step(forward, optimizer, images, labels, cfg, mix)
                step += 1
                if ema is not None:
                    ema.update(model, step)
                tally.add(loss, logits, labels, clipped)
                bar.set_postfix(loss=f"{tally.loss_sum / tally.seen:.3f}", lr=f"{lr:.3g}")
                if stop.signal or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                                   and tally.batches < steps_per_epoch):
                    checkpoint(epoch, tally)
                if stop.signal:
                    raise TrainingStopped(f"stopped by {stop.signal} at step {step}; the "
                                          f"checkpoint in {out} is saved: continue with "
                                          "--resume", stop.signal)
            val = evaluate(model, data.val, normalize, cfg, device) if data.val else None
            val_ema = evaluate(ema.module, data.val, normalize, cfg, device) \
                if data.val and ema else None
            row = {"epoch": epoch + 1, "step": step, **tally.summary(), "lr": lr,
                   "val_loss": val and val["loss"], "val_acc": val and val["top1"],
                   "val_acc_ema": val_ema and val_ema["top1"]}
            print(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                  f"train {row['train_acc']:.2f}%"
                  + (f"  val {val['top1']:.2f}%" if val else "")
                  + (f"  val(EMA) {val_ema['top1']:.2f}%" if val_ema else "")
                  + f"  {row['img_per_s']:.0f} img/s  lr {lr:.4f}  "
                  f"AGC clipped {100 * row['agc_clipped']:.1f}% of units  "
                  f"({row['epoch_seconds']:.0f}s)", flush=True)
            selected = select_weights(val, val_ema, ema is not None)
            checkpoint(epoch + 1)
            log.append(row)  # after the checkpoint: a resumed run rewrites rows it redoes
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


def _resumable(cfg, saved):
    """The saved config with this run's execution-only fields, for comparing on resume."""
    keep = {"resume", "progress", "tensorboard", "threads", "workers", "out_dir", "device",
            "bf16", "compile"}
    return from_dict({**saved, **{k: getattr(cfg, k) for k in keep}})
