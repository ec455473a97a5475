"""The NFNet paper's AGC claim as an experiment: short training runs over a grid of batch sizes,
learning rates and clip factors (0 = no AGC); each cell records whether training diverged and
the validation accuracy it reached. Writes a CSV and a heatmap figure per clip factor.
"""

import csv
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .config import preset
from .train import TrainingDiverged, train

FIELDS = ["batch_size", "lr", "clip_factor", "val_top1", "diverged_at_step", "seconds"]


def agc_study(base, batch_sizes, lrs_per_256, clip_factors, out_csv, progress=print):
    """Train `base` (a TrainConfig) once per grid cell; the learning rate scales linearly with
    the batch (lr = lr_per_256 · batch / 256, as SPEC §11). Returns the rows written."""
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
                    _write(rows, out_csv)
    return rows


def _write(rows, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot_agc_study(rows, path, title):
    """One heatmap per clip factor: batch × learning rate, colour = validation accuracy,
    crossed-out cells = diverged."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    clips = sorted({r["clip_factor"] for r in rows})
    batches = sorted({r["batch_size"] for r in rows})
    ratios = sorted({r["lr"] * 256 / r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(clips), figsize=(3.6 * len(clips) + 1, 3.6), squeeze=False)
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
               xlabel="learning rate per 256 images", ylabel="batch size",
               title="no AGC" if not clip else f"AGC λ = {clip:g}")
    fig.colorbar(image, ax=axes[0].tolist(), label="validation top-1 (%)")
    fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def default_base(epochs=2):
    """The study's per-cell recipe: the `fmnist` preset, shortened, without EMA or compile."""
    return replace(preset("fmnist"), epochs=epochs, ema_decay=0.0, compile=False,
                   tta_flip=False)
