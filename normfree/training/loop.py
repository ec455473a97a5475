"""The training loop: `train(cfg)` reads top to bottom; each phase is a named helper.

Restore (or start) → epochs of `train_step`s with checkpoints → validation, where raw vs EMA
weights are chosen → test, export and results. Under torchrun each process trains its part of
every global batch (`distributed.py`), in micro-batches where it cannot hold its part at once,
and evaluates its share of the validation and test images; rank 0 alone logs and writes files.
"""

import contextlib
import json
import logging
import math
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import nn
from ..progress import ProgressBar

from ..data.batches import Normalize
from ..data.spec import AugmentSpec
from ..errors import ConfigError, TrainingDiverged, TrainingStopped
from ..evaluation import protocol_text
from ..files import save_json
from ..runtime import loss_scaler, machine_info, settings_kept
from ..weights.metadata import check_layout, export_weights, layout_of
from . import distributed
from .budget import (Budget, Plan, budget_left, plan_announcement, refuse_known_too_small,
                     validates_periodically)
from .checkpoint_eval import evaluate_as_configured, preprocessing_of, protocol_of
from .checkpoints import Checkpoint, rng_states, save_checkpoint, set_rng_states
from .config import TrainConfig, describe, from_dict, peak_lr, to_dict
from .lock import RunLock
from .logs import EpochTally, MetricsLog, plot_curves
from .model_setup import (compiled, freeze, initial_weights, initialise_from, memory_format,
                          model_for)
from .optim import EMA, batch_mixer, build_optimizer, load_optimizer_state, train_step
from .resizing import downscaled, pixel_share
from .run_data import data_for
from .run_dirs import config_differences, run_dir
from .run_folder import CHECKPOINT, PREVIOUS, checkpoint_resumed, make_run_dir, what_is_kept
from .resolve import micro_batch_size, refuse_unaffordable_run, resolve_config
from .sam import SAM
from .state import Run
from .signals import StopOnSignal
from .specs import ModelSpec, spec_from

log = logging.getLogger(__name__)  # shown by the command line (cli.py), left to a library's caller


def train(cfg: TrainConfig):
    """Train, select raw vs EMA weights on the validation split, report on the test set.

    Returns the results (rank 0; the other ranks of a torchrun job return None).
    """
    procs, device = distributed.start(cfg.device)
    # inductor says, while it compiles for the CPU, that it found no CUDA
    quiet = ["torch.utils.cpp_extension"] if cfg.compile and device.type == "cpu" else []
    try:  # the warnings filters, thread count and loggers the run sets are the run's alone
        with distributed.peer_failures_in_one_line(procs), settings_kept(cfg.threads, quiet):
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
    out = Path(distributed.gather(procs, str(run_dir(cfg)) if procs.main else None)[0])
    with RunLock(out) as lock:  # rank 0 owns the folder: from here, or once it makes it
        if procs.main and out.is_dir():
            lock.acquire()
        try:
            return _train_owned(cfg, procs, device, started, out, lock)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e}; {what_is_kept(out)}", e.step) from None


def _train_owned(cfg, procs, device, started, out, lock):
    state, path = checkpoint_resumed(cfg, procs, device, out)
    source = None if state else initial_weights(spec_from(ModelSpec, cfg), device)
    cfg = resolve_config(cfg, device, state and state.config, source)
    micro_batch_size(cfg, procs.world_size)  # refused before any data is read
    refuse_unaffordable_run(cfg, device, procs.world_size)
    if cfg.time_budget and not cfg.steps:
        refuse_known_too_small(cfg, procs)
    run = build_run(cfg, started, procs, device, out, source)  # reads the data: checks it
    if state is not None:
        restore(run, state, path)
        if run.epoch >= (run.num_epochs or math.inf) and (out / "results.json").is_file():
            return finished(run)
    if procs.main:
        make_run_dir(out, run.cfg, lock)  # only now, once everything has been checked
    announce(run)
    if run.cfg.time_budget:
        run.budget = Budget(run)
    first, epoch = run.epoch, run.epoch
    with StopOnSignal() as stop:
        while run.num_epochs is None or epoch < run.num_epochs:
            tally = train_epoch(run, epoch, stop, state if epoch == first else None)
            end_epoch(run, epoch, tally)
            epoch += 1
    return finish(run)


def finished(run):
    """`--resume` of a run that has finished: say so, change nothing."""
    if not run.procs.main:
        return None
    results = json.loads((run.out / "results.json").read_text())
    log.info(f"{run.out} is finished ({run.epoch} epochs, test top-1 "
             f"{results['test_top1']:.2f}%): nothing to do")
    return results


def build_run(cfg, started, procs, device, out, source):
    """Data, model (initialised from `source` weights when fine-tuning), optimizer and EMA."""
    cfg, data = data_for(cfg, procs)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed and nothing else
    model = model_for(spec_from(ModelSpec, cfg), data)
    if source is not None:
        initialise_from(model, source, data.classes)
    freeze(model, cfg.freeze)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    if procs.distributed and device.type == "cuda":  # SyncBatchNorm runs on GPUs only
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=memory_format(cfg))
    # DDP averages the gradients during backward, so AGC clips the global-batch gradient
    wrapped = distributed.ddp(model) if procs.distributed else model
    return Run(cfg, started, procs, device, out, data, model, compiled(wrapped, cfg, device),
               build_optimizer(cfg, model), EMA(model, cfg.ema_decay) if cfg.ema_decay else None,
               batch_mixer(spec_from(AugmentSpec, cfg), len(data.classes)),
               Normalize(data.mean, data.std).to(device),
               micro_batch_size(cfg, procs.world_size), loss_scaler(device, cfg.precision),
               wrapped.no_sync if procs.distributed else contextlib.nullcontext,
               sam=SAM(cfg.sam_rho, cfg.sam_fraction) if cfg.sam_rho else None)


def restore(run, state, path):
    """Continue from a checkpoint written with the same settings (but for how it executes)."""
    differ = config_differences(run.cfg, from_dict(state.config))
    if differ:
        raise ConfigError(f"{path} was written with other settings; " + "; ".join(differ))
    check_layout(run.model, state.layout, path)
    run.model.load_state_dict(state.model)
    load_optimizer_state(run.optimizer, state.optimizer)
    if run.ema is not None:
        run.ema.module.load_state_dict(state.ema)
    run.step, run.epoch, run.selected = state.step, state.epoch, state.selected
    run.skipped_steps = state.skipped_steps
    if run.scaler is not None and state.scaler:
        run.scaler.load_state_dict(state.scaler)
    run.plan = state.budget and Plan.from_dict(state.budget)
    run.started -= state.train_seconds  # the time of the earlier processes


def announce(run):
    """Print the resolved config; rank 0 also writes it and opens the metrics log."""
    if not run.procs.main:
        return
    params = sum(p.numel() for p in run.model.parameters())
    over = f" over {run.procs.world_size} processes" if run.procs.distributed else ""
    per_process = run.cfg.batch_size // run.procs.world_size
    accumulate = (f", {per_process // run.micro_batch} micro-batches of {run.micro_batch} a step"
                  if run.micro_batch < per_process else "")
    scaled = (f", peak lr {peak_lr(run.cfg):.4g} ({run.cfg.lr_base:g} × {run.cfg.batch_size}"
              "/256)" if run.cfg.lr_base else "")
    log.info(f"normfree train: {run.cfg.model} on {run.cfg.dataset}, {params:,} params, "
             f"{run.steps_per_epoch} steps/epoch{over}{accumulate}{scaled}, "
             f"{run.cfg.precision}, output in {run.out}\n{describe(run.cfg)}")
    if run.step and run.epoch >= (run.num_epochs or math.inf):  # stopped while finishing
        log.info(f"resuming {run.out} after its last step ({run.step}): testing and exporting")
    elif run.step:
        log.info(f"resuming {run.out} from step {run.step} (epoch {run.epoch + 1} of "
                 f"{run.num_epochs or '?'})")
    save_json(run.out / "config.json", to_dict(run.cfg))
    run.log = MetricsLog(run.out, run.cfg.tensorboard, keep_epochs=run.epoch)


def save_run_checkpoint(run, epoch, tally=None):
    """Checkpoint at `epoch` (completed epochs); with the unfinished epoch's `tally` a
    mid-epoch checkpoint, which is a collective under DDP (every rank's RNG state)."""
    rng = distributed.gather(run.procs, rng_states()) if tally else None
    tally = tally and tally.summed(run.procs, run.device)
    if run.procs.main:
        save_checkpoint(run.out / CHECKPOINT, Checkpoint(
            model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
            ema=run.ema.module.state_dict() if run.ema else None, step=run.step,
            epoch=epoch, tally=tally and tally.state(), rng=rng, selected=run.selected,
            train_seconds=time.time() - run.started, budget=run.plan and run.plan.to_dict(),
            skipped_steps=run.skipped_steps, scaler=run.scaler and run.scaler.state_dict(),
            config=to_dict(run.cfg), model_name=run.cfg.model, layout=layout_of(run.model),
            classes=list(run.data.classes)), previous=run.out / PREVIOUS)


def train_epoch(run, epoch, stop, resumed=None):
    """One pass over the training data (from where a mid-epoch checkpoint `resumed` left it);
    returns the epoch's tally summed over processes."""
    cfg, procs = run.cfg, run.procs
    # per-epoch seeds make resume exact; the data order is global, the rest per rank
    torch.manual_seed(cfg.seed * 100003 + epoch + 1000003 * procs.rank)
    run.data.train.generator.manual_seed(cfg.seed * 100003 + epoch)
    tally = EpochTally()
    if resumed is not None and resumed.tally:
        saved = resumed.tally  # sums over all processes
        tally = EpochTally(**saved) if procs.main else EpochTally(saved["batches"])
        if len(resumed.rng) == procs.world_size:  # else: not bit-exact, same order
            set_rng_states(resumed.rng[procs.rank])
    if run.budget is not None:
        run.budget.start_epoch(run, epoch)
    run.model.train()
    steps = min(run.steps_per_epoch, (run.total_steps or math.inf) - epoch * run.steps_per_epoch)
    bar = ProgressBar(run.data.train.iterate(tally.batches), total=steps, initial=tally.batches,
                      desc=f"epoch {epoch + 1}/{run.num_epochs or '?'}", leave=False,
                      disable=None if cfg.progress and procs.main else True, dynamic_ncols=True)
    for images, labels in bar:
        lr = run.lr()
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        previous_size, size = run.image_size, run.train_image_size()
        result = train_step(run.forward, run.optimizer, images, labels,
                            micro_batch=run.micro_batch,
                            prepare=partial(on_device, run, size=size),
                            label_smoothing=cfg.label_smoothing, precision=cfg.precision,
                            scaler=run.scaler, mix=run.mix, no_sync=run.no_sync,
                            sam=run.sam, step=run.step + 1)
        run.step, run.image_size = run.step + 1, size
        run.skipped_steps += result.skipped
        if run.ema is not None:
            run.ema.update(run.model, run.step)
        tally.add(result, labels.to(run.device, non_blocking=True))
        # a step at a new size (and a process's first) compiled: not one to time
        plan = run.budget and run.budget.after_step(
            run, pixel_share(size, run.data.image_size), size != previous_size)
        if plan is not None:
            take_plan(run, plan)
            bar.total = min(run.steps_per_epoch, run.total_steps - epoch * run.steps_per_epoch)
        bar.set_postfix(loss=f"{tally.loss_sum / tally.seen:.3f}", lr=f"{lr:.3g}",
                        **budget_left(run))
        last = run.step == run.total_steps
        stopping = stop.requested(procs, run.device)  # all ranks agree on the step
        if stopping or (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0
                        and tally.batches < run.steps_per_epoch and not last):
            save_run_checkpoint(run, epoch, tally)
        if stopping:
            raise TrainingStopped(f"stopped by {stopping.name} at step {run.step}; the "
                                  f"checkpoint in {run.out} is saved: continue with --resume",
                                  stopping)
        if last:
            break
    return tally.summed(procs, run.device)


def take_plan(run, plan):
    """A budgeted run's new plan: its length goes into the config and config.json."""
    first, before = run.plan is None, run.cfg.steps
    run.cfg, run.plan = replace(run.cfg, steps=plan.steps), plan
    if run.procs.main and plan.steps != before:
        save_json(run.out / "config.json", to_dict(run.cfg))
        if first or abs(plan.steps - before) >= 0.01 * before:  # not for every step it moves
            log.info(plan_announcement(plan, run.cfg, run.steps_per_epoch))


def on_device(run, images, size):
    """A training batch on the run's device: normalised, at `size`, in its memory format."""
    images = run.normalize(images.to(run.device, non_blocking=True))
    if size != images.shape[-1]:
        images = downscaled(images, size)
    return images.contiguous(memory_format=memory_format(run.cfg))


def evaluate_shared(run, model, batches, what="validation images"):
    """`evaluate` on every process's share of `batches`, the counts summed over them (a
    collective under DDP: every process calls it)."""
    return evaluate_as_configured(
        run.cfg, model, batches, run.normalize, what,
        lambda totals: distributed.sum_across(run.procs, totals, run.device))


def select_weights(val, val_ema, has_ema):
    """("raw" or "ema", validation top-1): the better on validation, or without a validation
    split the EMA when there is one."""
    if val is None:
        return ("ema" if has_ema else "raw", None)
    candidates = [("raw", val["top1"])] + ([("ema", val_ema["top1"])] if val_ema else [])
    return max(candidates, key=lambda c: c[1])


def end_epoch(run, epoch, tally):
    """Validate when due (always after the last epoch, where raw vs EMA is chosen), every
    process its share; then rank 0 prints and logs the epoch and checkpoints."""
    cfg = run.cfg
    due = run.step == run.total_steps or validates_periodically(epoch + 1, cfg.eval_every)
    val = evaluate_shared(run, run.model, run.data.val) if due and run.data.val else None
    val_ema = (evaluate_shared(run, run.ema.module, run.data.val)
               if due and run.data.val and run.ema else None)
    if due and not run.data.test_is_val:  # choosing on the reported split would flatter it
        run.selected = select_weights(val, val_ema, run.ema is not None)
    if not run.procs.main:
        return
    lr = run.lr()
    row = {"epoch": epoch + 1, "step": run.step, **tally.summary(), "lr": lr,
           "val_loss": val and val["loss"], "val_acc": val and val["top1"],
           "val_acc_ema": val_ema and val_ema["top1"]}
    if run.scaler is not None:
        row["skipped_steps"] = tally.skipped_steps
    log.info(f"epoch {epoch + 1:3d}/{run.num_epochs}  loss {row['train_loss']:.4f}  "
             f"train {row['train_acc']:.2f}%" + (f"  val {val['top1']:.2f}%" if val else "")
             + (f"  val(EMA) {val_ema['top1']:.2f}%" if val_ema else "")
             + f"  {row['img_per_s']:.0f} img/s  lr {lr:.4f}  AGC clipped "
             f"{100 * row['agc_clipped']:.1f}% of units  ({row['epoch_seconds']:.0f}s)")
    report_skipped("training", run.data.train)
    report_skipped("validation", run.data.val)
    save_run_checkpoint(run, epoch + 1)
    run.log.append(row)  # after the checkpoint: a resumed run rewrites rows it redoes


def report_skipped(split, batches):
    """One line for the unreadable files of a folder split's last pass, if any."""
    skipped = getattr(batches, "skipped", None)
    if skipped:
        log.warning(f"  skipped {len(skipped)} unreadable {split} image(s) in the last pass, "
                    f"e.g. {skipped[0]}")


def finish(run):
    """Test the chosen weights, or, where the test split is the validation split (an ImageNet
    folder's val/), raw and EMA weights both, choosing nothing on it (every process its share);
    rank 0 writes curves.png, model.safetensors and results.json and returns the results."""
    cfg, out = run.cfg, run.out
    candidates = {"raw": run.model, **({"ema": run.ema.module} if run.ema else {})}
    if run.data.test_is_val:
        weights = "ema" if run.ema else "raw"  # exported: the reference reports its EMA first
        names = list(candidates)
    else:
        weights = run.selected[0] if run.selected else "raw"
        names = [weights]
    tested = {name: evaluate_shared(run, candidates[name], run.data.test, "test images")
              for name in names}
    if not run.procs.main:
        return None
    test = tested[weights]
    run.log.close()
    report_skipped("test", run.data.test)
    plot_curves(out / "metrics.csv", out / "curves.png")
    export_weights(candidates[weights], out / "model.safetensors",
                   {"model": cfg.model, "numerics": cfg.numerics or "deepmind",
                    "classes": list(run.data.classes),
                    "preprocessing": preprocessing_of(cfg, run.data), "config": to_dict(cfg)})
    results = {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
               "weights": weights, "protocol": protocol_of(cfg, run.data, weights),
               "selected_on": "validation" if len(names) == 1 and run.selected else None,
               "val_top1": run.selected[1] if run.selected and len(names) == 1 else None,
               "test_by_weights": {name: {k: r[k] for k in ("top1", "top5", "loss", "images")}
                                   for name, r in tested.items()},
               "epochs": run.num_epochs, "steps": run.step,
               "train_seconds": time.time() - run.started,
               "budget": run.plan and run.plan.to_dict(),
               "skipped_steps": run.skipped_steps, "seed": cfg.seed,
               "machine": machine_info(), "out_dir": str(out),
               "skipped_images": {split: len(getattr(batches, "skipped", ())) for split, batches
                                  in (("train", run.data.train), ("test", run.data.test))}}
    save_json(out / "results.json", results)
    scores = ", ".join(f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%"
                       + (f" ({name})" if len(tested) > 1 else "") for name, r in tested.items())
    log.info(f"test {scores}  ({protocol_text(results['protocol'])}"
             + ("; nothing chosen on the test split" if len(names) > 1 else "")
             + f"; {results['train_seconds'] / 60:.1f} min)\n"
             f"artefacts: {out}/ (results.json, metrics.csv, curves.png, checkpoint.pt, "
             "model.safetensors)")
    return results

