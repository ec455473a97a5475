"""Run artefacts: metrics.csv, curves.png, TensorBoard scalars, and the machine's description."""

import csv
import io
import os
import platform
import subprocess
from pathlib import Path

import torch

from .checkpoint import atomic_write


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "commit": git_commit()}


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class MetricsLog:
    """Appends one row per epoch to metrics.csv (and TensorBoard, if asked)."""

    def __init__(self, out_dir, tensorboard=False, keep_epochs=0):
        """`keep_epochs`: rows of later epochs (written before a crash, redone on resume) go."""
        self.path = Path(out_dir) / "metrics.csv"
        if self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if float(r["epoch"]) <= keep_epochs]
            atomic_write(self.path, lambda f: f.write(_csv_text(reader.fieldnames, rows)))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SystemExit("--tensorboard needs the tensorboard package: "
                                 "pip install 'normfree[tensorboard]'") from None
            self.writer = SummaryWriter(Path(out_dir) / "tensorboard")

    def append(self, row):
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and value is not None:
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def _csv_text(fieldnames, rows):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def read_metrics(path):
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", "None") else None for k, v in row.items()}
                for row in csv.DictReader(f)]


def plot_curves(metrics_csv, out_png):
    """Loss and accuracy against epoch, from metrics.csv."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)

    def series(key):  # validation may run every few epochs only (--eval-every)
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        return tuple(zip(*points)) or ((), ())

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
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
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
