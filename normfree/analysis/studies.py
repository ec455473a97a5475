"""The papers' training claims as experiments on Fashion-MNIST, each writing a CSV and a figure.

- `agc_study`: short runs over a grid of batch sizes, learning rates and clip factors (0 = no
  AGC); each cell records whether training diverged and the validation accuracy it reached.
- `nf_vs_bn`: an NF model against its batch-norm twin with the same recipe (the twin without
  AGC), with and without augmentation, over seeds: validation accuracy per epoch and per second
  of training, test accuracy and train − test gap, the train-step time of each measured back to
  back, and peak training memory.
"""

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import TrainingDiverged
from ..figures import save_figure, subplots
from ..files import write_csv
from ..nn.variants import bn_twin_name
from ..nn.zoo import build_model
from ..runtime import default_device, default_precision, num_threads
from ..training.config import preset
from ..training.logs import read_metrics
from ..training.loop import train
from .bench import make_train_step, time_calls, train_peak_memory
from .hypothesis import read_study_rows, recipe_for, run_and_measure, summarise

FIELDS = ["batch_size", "lr", "clip_factor", "val_top1", "diverged_at_step", "seconds"]


def agc_study(base, batch_sizes, lrs_per_256, clip_factors, out_csv, progress=print):
    """Train `base` (a TrainConfig) once per grid cell; the learning rate scales linearly with
    the batch (lr = lr_per_256 · batch / 256, as docs/architecture.md §11). Returns the rows
    written."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for batch in batch_sizes:
            for lr_per_256 in lrs_per_256:
                for clip in clip_factors:
                    cfg = replace(base, batch_size=batch, lr=lr_per_256 * batch / 256,
                                  clip_factor=clip, progress=False,
                                  out_dir=str(Path(scratch) / f"b{batch}-lr{lr_per_256}-c{clip}"))
                    started, row = time.time(), {"batch_size": batch, "lr": cfg.lr,
                                                 "clip_factor": clip}
                    try:
                        result = train(cfg)
                        row.update(val_top1=result["val_top1"], diverged_at_step=None)
                    except TrainingDiverged as e:
                        row.update(val_top1=None, diverged_at_step=e.step)
                    row["seconds"] = round(time.time() - started, 1)
                    rows.append(row)
                    progress(f"batch {batch:5d}  lr {cfg.lr:7.3f}  clip {clip:<5}  "
                             + (f"val {row['val_top1']:.2f}%" if row["val_top1"] is not None
                                else f"diverged at step {row['diverged_at_step']}"))
                    write_csv(out_csv, FIELDS, rows)
    return rows


def plot_agc_study(rows, path, title):
    """One heatmap per clip factor: batch × learning rate, colour = validation accuracy,
    crossed-out cells = diverged."""
    clips = sorted({r["clip_factor"] for r in rows})
    batches = sorted({r["batch_size"] for r in rows})
    ratios = sorted({r["lr"] * 256 / r["batch_size"] for r in rows})
    fig, axes = subplots(1, len(clips), figsize=(3.6 * len(clips) + 1, 3.6), squeeze=False)
    for ax, clip in zip(axes[0], clips):
        grid = np.full((len(batches), len(ratios)), np.nan)
        for r in rows:
            if r["clip_factor"] == clip and r["val_top1"] is not None:
                i = batches.index(r["batch_size"])
                j = ratios.index(min(ratios, key=lambda x: abs(x - r["lr"] * 256 /
                                                                r["batch_size"])))
                grid[i, j] = r["val_top1"]
        image = ax.imshow(grid, vmin=10, vmax=100, cmap="viridis", origin="lower")
        for i in range(len(batches)):
            for j in range(len(ratios)):
                text = "diverged" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="red" if np.isnan(grid[i, j]) else "white")
        ax.set(xticks=range(len(ratios)), xticklabels=[f"{x:g}" for x in ratios],
               yticks=range(len(batches)), yticklabels=batches,
               xlabel="learning rate per 256 images",
               title="no AGC" if not clip else f"AGC λ = {clip:g}")
    axes[0][0].set_ylabel("batch size")
    fig.colorbar(image, ax=axes[0].tolist(), label="validation top-1 (%)")
    fig.suptitle(title)
    save_figure(fig, path, bbox_inches="tight")


def default_base(epochs=2):
    """The studies' per-cell recipe: the `fmnist` preset, shortened, without EMA or compile,
    for `nfnet_s0` (the model with a batch-norm twin; the studies in docs/results.md use it)."""
    return preset("fmnist", model="nfnet_s0", epochs=epochs, ema_decay=0.0, compile=False,
                  tta_flip=False)


BN_FIELDS = ["model", "augmentation", "seed", "batch_size", "epoch", "seconds", "val_top1",
             "test_top1", "train_top1", "gap", "step_ms", "peak_rss_mb"]


def nf_vs_bn(base, out_csv, seeds=None, augmentations=("on",), bn_lr=None, progress=print):
    """Train `base.model` and its BN twin with `base`'s recipe (the twin without AGC, at
    `bn_lr` if given), with and/or without augmentation, once per seed. Rows: one per run and
    epoch with the cumulative training seconds; the last row of each run carries its test and
    training-set accuracy, their gap, and each model's train-step time and peak training memory
    (measured once per model). Runs already in `out_csv` are skipped, and when none is left
    nothing is measured. Returns all rows."""
    names = [base.model, bn_twin_name(base.model)]
    rows = read_study_rows(out_csv)
    done = {(r["model"], r["augmentation"], r["seed"]) for r in rows if r["test_top1"] is not None}
    pending = [(seed, augmentation, name) for seed in seeds or [base.seed]
               for augmentation in augmentations for name in names
               if (name, augmentation, seed) not in done]
    if not pending:
        return rows
    clip_factors = {name: recipe_for(base, name, "on").clip_factor for name in names}
    with num_threads(base.threads):  # timed with the runs' threads (`train` sets its own)
        step_ms = _step_times(base, clip_factors)
    size = base.image_size or build_model(base.model).cfg.train_size
    memory = {name: train_peak_memory(name, size, base.batch_size)["peak_rss_mb"]
              for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        for seed, augmentation, name in pending:
            cfg = replace(recipe_for(base, name, augmentation, bn_lr), seed=seed,
                          progress=False, out_dir=str(Path(scratch) / f"{name}-{seed}"
                                                      f"-{augmentation}"))
            measured = run_and_measure(cfg)
            seconds, run_rows = 0.0, []
            for m in read_metrics(Path(cfg.out_dir) / "metrics.csv"):
                seconds += m["epoch_seconds"]
                run_rows.append({**dict.fromkeys(BN_FIELDS), "model": name,
                                 "augmentation": augmentation, "seed": seed,
                                 "batch_size": cfg.batch_size, "epoch": int(m["epoch"]),
                                 "seconds": round(seconds, 3), "val_top1": m["val_acc"]})
            run_rows[-1].update(
                test_top1=measured["test_top1"], train_top1=measured["train_top1"],
                gap=round(measured["train_top1"] - measured["test_top1"], 3),
                step_ms=step_ms[name], peak_rss_mb=memory[name])
            rows += run_rows
            progress(f"{name}, augmentation {augmentation}, seed {seed}: test "
                     f"{measured['test_top1']:.2f}%, train − test "
                     f"{run_rows[-1]['gap']:+.2f} after {cfg.epochs} epochs, "
                     f"{seconds:.0f} s, {step_ms[name]:.1f} ms a step, "
                     f"{memory[name]} MB peak")
            write_csv(out_csv, BN_FIELDS, rows)
    return rows


def _step_times(cfg, clip_factors, repeats=20):
    """Median milliseconds of a training step (forward, backward, AGC where the model's clip
    factor is not 0, optimizer step) of each model on one batch of the recipe's shape, calls
    interleaved."""
    names = list(clip_factors)
    device = default_device(cfg.device)
    fmt = torch.contiguous_format if cfg.channels_last is False else torch.channels_last
    models = [build_model(name, 10).to(device, memory_format=fmt) for name in names]
    g = torch.Generator().manual_seed(0)
    size = cfg.image_size or models[0].cfg.train_size
    images = torch.randn(cfg.batch_size, models[0].cfg.in_chans, size, size, generator=g)
    images = images.to(device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (cfg.batch_size,), generator=g).to(device)
    precision = cfg.precision or default_precision(device)
    steps = [make_train_step(model, images, labels, clip_factors[name], precision)[0]
             for name, model in zip(names, models)]
    times = time_calls(*steps, repeats=repeats)
    return {name: round(t[0] * 1000, 2) for name, t in zip(names, times)}


def plot_nf_vs_bn(rows, path, title):
    """Three panels, means over seeds with their std as error bars: test top-1 and the
    train − test gap per augmentation setting (one marker per model), and validation accuracy
    against training seconds (colour: model; dashed, square markers: without augmentation)."""
    fig, (test_ax, gap_ax, by_time) = subplots(1, 3, figsize=(13, 3.8))
    finished = [r for r in rows if r["test_top1"] is not None]
    runs = ["model", "augmentation"]
    test, gap, step_ms = (summarise(finished, runs, v) for v in ("test_top1", "gap", "step_ms"))
    colours = {model: f"C{i}" for i, model in enumerate(dict.fromkeys(k[0] for k in test))}
    labels = {m: f"{m} ({step_ms[(m, a)][0]:.0f} ms/step)" for m, a in step_ms}  # one per model
    _per_augmentation(test_ax, test, colours, labels, "test top-1 (%)")
    _per_augmentation(gap_ax, gap, colours, labels, "train − test (points)")
    validated = [r for r in rows if r["val_top1"] is not None]
    val, seconds = (summarise(validated, [*runs, "epoch"], v) for v in ("val_top1", "seconds"))
    for run in dict.fromkeys(k[:2] for k in val):
        epochs = sorted(k[2] for k in val if k[:2] == run)
        mean, std = zip(*(val[(*run, e)][:2] for e in epochs))
        by_time.errorbar([seconds[(*run, e)][0] for e in epochs], mean, yerr=std, capsize=3,
                         marker="o" if run[1] == "on" else "s", color=colours[run[0]],
                         linestyle="-" if run[1] == "on" else "--")
    by_time.set(xlabel="training seconds", ylabel="validation top-1 (%)")
    by_time.grid(alpha=0.3)
    test_ax.legend(fontsize=7)
    seeds = max(n for _, _, n in test.values())
    fig.suptitle(f"{title} ({seeds} seed{'s' * (seeds > 1)})")
    save_figure(fig, path, bbox_inches="tight")


def _per_augmentation(ax, stats, colours, labels, ylabel):
    """`stats` ({(model, augmentation): (mean, std, n)}) as error bars, one column per
    augmentation setting ("on" first), the models side by side within it."""
    augmentations = sorted({a for _, a in stats}, reverse=True)
    for i, model in enumerate(colours):
        cells = [a for a in augmentations if (model, a) in stats]
        offset = 0.1 * (i - (len(colours) - 1) / 2)
        ax.errorbar([augmentations.index(a) + offset for a in cells],
                    [stats[(model, a)][0] for a in cells], [stats[(model, a)][1] for a in cells],
                    fmt="o", capsize=3, color=colours[model], label=labels[model])
    ax.set(xticks=range(len(augmentations)), xlim=(-0.5, len(augmentations) - 0.5),
           xticklabels=[f"augmentation {a}" for a in augmentations], ylabel=ylabel)
    ax.grid(alpha=0.3)
