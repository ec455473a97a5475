"""A run's logs: one metrics.csv row per epoch (and TensorBoard scalars, if asked), the running
tally of an epoch's training metrics, and curves.png drawn from metrics.csv."""

import csv
import os
import time
from pathlib import Path

from ..errors import MissingDependency
from ..figures import save_figure, subplots
from ..files import append_csv_row, read_csv, write_csv
from . import distributed


def say(message):
    """The default `log` callable: a line on stdout, at once (a run's progress is read live)."""
    print(message, flush=True)


class MetricsLog:
    """Appends one row per epoch to metrics.csv (and TensorBoard, if asked)."""

    def __init__(self, out_dir, tensorboard=False, keep_epochs=0, log=say):
        """`keep_epochs`: rows of later epochs (written before a crash, redone on resume) go.
        A damaged file (a person's output, not the run's state) is set aside, said."""
        self.path = Path(out_dir) / "metrics.csv"
        if self.path.exists():
            try:
                rows = read_csv(self.path, numbers=False)
                kept = [r for r in rows if float(r["epoch"]) <= keep_epochs]
            except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as e:
                aside = self.path.with_name("metrics.damaged.csv")
                os.replace(self.path, aside)
                log(f"{self.path} is damaged ({type(e).__name__}): set aside as {aside.name}; "
                    f"the new one starts after epoch {keep_epochs}")
                kept = []
            if kept:
                write_csv(self.path, list(kept[0]), kept)
            else:  # `append` starts it again, header first
                self.path.unlink(missing_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MissingDependency("--tensorboard needs the tensorboard package: "
                                        "pip install 'normfree[tensorboard]'") from None
            self.writer = SummaryWriter(Path(out_dir) / "tensorboard")

    def append(self, row):
        append_csv_row(self.path, row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and value is not None:
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def read_metrics(path):
    return read_csv(path)


class EpochTally:
    """Running sums of one epoch's training metrics (checkpointed mid-epoch)."""

    def __init__(self, batches=0, seen=0, correct=0, loss_sum=0.0, clipped_sum=0.0,
                 seconds=0.0, skipped_steps=0):
        self.batches, self.seen, self.correct = batches, seen, correct
        self.loss_sum, self.clipped_sum, self.seconds = loss_sum, clipped_sum, seconds
        self.skipped_steps = skipped_steps
        self._since = time.time()

    def add(self, step, labels):
        """Count a `StepResult` on a batch of `labels`: class indices, or soft targets (mixed
        in the loader), whose largest share is the class counted as right."""
        self.batches += 1
        self.seen += len(labels)
        classes = labels.argmax(1) if labels.dim() == 2 else labels
        self.correct += (step.logits.argmax(1) == classes).sum().item()
        self.loss_sum += step.loss.item() * len(labels)
        self.clipped_sum += 0.0 if step.clipped is None else step.clipped.item()
        self.skipped_steps += step.skipped
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
                          self.seconds, self.skipped_steps)

    def summary(self):
        return {"train_loss": self.loss_sum / self.seen,
                "train_acc": 100.0 * self.correct / self.seen,
                "img_per_s": self.seen / self.seconds, "agc_clipped": self.clipped_sum /
                self.batches, "epoch_seconds": self.seconds}


def plot_curves(metrics_csv, out_png):
    """Loss and accuracy against epoch, from metrics.csv (none: nothing to draw, as when a
    damaged one was set aside after the last epoch)."""
    if not Path(metrics_csv).is_file():
        return
    rows = read_metrics(metrics_csv)

    def series(key):  # validation may run every few epochs only (--eval-every)
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        return tuple(zip(*points)) or ((), ())

    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(*series("train_loss"), label="train")
    ax_loss.plot(*series("val_loss"), label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy",
                title="Loss (train: augmented, with label smoothing)")
    ax_acc.plot(*series("train_acc"), label="train (augmented)")
    ax_acc.plot(*series("val_acc"), label="val")
    ax_acc.plot(*series("val_acc_ema"), label="val, EMA weights")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, out_png, dpi=100)
