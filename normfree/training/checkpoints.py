"""Checkpoints: one self-describing file, verified when read, written atomically beside the one
before it.

A checkpoint holds the model (from the unwrapped module), optimizer, EMA, step counters, the
resolved config and RNG states; `Checkpoint` is the only code that knows its keys. It is written
to a temporary file in the same directory, fsynced and `os.replace`d, so a crash or a full disk
never leaves a half-written file under the real name; the file it replaces becomes
`checkpoint.prev.pt`, so damage to one file loses at most one checkpoint interval. Loading checks
the zip records' CRC-32s, then uses `torch.load(weights_only=True)`: tensors and plain
containers only.
"""

import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError
from ..files import atomic_write
from ..weights.loading import CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS, load_torch_file


@dataclass
class Checkpoint:
    model: dict  # state dict of the unwrapped model
    config: dict  # the resolved `TrainConfig`, as `config.to_dict` writes it
    optimizer: Optional[dict] = None
    ema: Optional[dict] = None  # the EMA model's state dict (None: EMA off)
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    tally: Optional[dict] = None  # the unfinished epoch's sums (a mid-epoch checkpoint)
    rng: Optional[list] = None  # every process's RNG states (a mid-epoch checkpoint)
    selected: Optional[tuple] = None  # ("raw" or "ema", validation top-1), once chosen
    train_seconds: float = 0.0  # wall-clock time of the processes so far
    budget: Optional[dict] = None  # what a budgeted run measured and planned
    skipped_steps: int = 0  # updates fp16's loss scaling skipped
    scaler: Optional[dict] = None  # fp16's `GradScaler` state
    model_name: Optional[str] = None
    layout: Optional[dict] = None  # `weights.metadata.layout_of(model)`
    classes: Optional[list] = None

    def to_dict(self):
        return {CHECKPOINT_WEIGHTS: self.model, "optimizer": self.optimizer, "ema": self.ema,
                "step": self.step, "epoch": self.epoch, "tally": self.tally, "rng": self.rng,
                "selected": self.selected, "train_seconds": self.train_seconds,
                "budget": self.budget, "skipped_steps": self.skipped_steps,
                "scaler": self.scaler, CHECKPOINT_CONFIG: self.config,
                "model_name": self.model_name, "layout": self.layout, "classes": self.classes}

    @classmethod
    def from_dict(cls, values, source="checkpoint"):
        """From `to_dict`'s keys; files of earlier versions lack some (their defaults then)."""
        if (not isinstance(values, dict) or CHECKPOINT_WEIGHTS not in values
                or CHECKPOINT_CONFIG not in values):
            raise CheckpointError(f"{source} is not a normfree training checkpoint (expected a "
                                  f"dict with '{CHECKPOINT_WEIGHTS}' and '{CHECKPOINT_CONFIG}' "
                                  "entries)")
        known = {f.name for f in fields(cls)} - {"model", "config"}
        return cls(model=values[CHECKPOINT_WEIGHTS], config=values[CHECKPOINT_CONFIG],
                   **{k: v for k, v in values.items() if k in known and v is not None})


def read_checkpoint(path, map_location="cpu"):
    """The checkpoint at `path`, its records verified; `CheckpointError` names a damaged one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return Checkpoint.from_dict(load_torch_file(path, map_location), path)


def read_config(path):
    """The config a checkpoint holds, without reading its tensors (a glance, unverified)."""
    values = load_torch_file(path, lazily=True)
    return Checkpoint.from_dict(values, path).config


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint as plain data, for scripts that inspect one: `Checkpoint.to_dict()` (a
    file of an earlier version with today's keys)."""
    return read_checkpoint(path, map_location).to_dict()


def save_checkpoint(path, checkpoint, previous=None):
    """Write `checkpoint` atomically; with `previous`, the file it replaces is kept there.

    A failure leaves `path` (and `previous`) as they were and raises `OutputError`: torch's
    zip writer reports a full disk as a `RuntimeError`, turned here into the `OSError` that
    `atomic_write` reports in one line.
    """
    def write(f):
        try:
            torch.save(checkpoint.to_dict(), f)
        except RuntimeError as e:
            free = shutil.disk_usage(Path(path).parent).free / 2**20
            reason = str(e).strip().splitlines()[0][:120]
            raise OSError(f"PyTorch's writer failed ({reason}); {free:.0f} MiB free on that "
                          "disk") from None
    atomic_write(path, write, before_replace=previous and (lambda: keep(path, previous)))


def keep(path, previous):
    """Make the file at `path` (if any) the file at `previous`, atomically, leaving `path` in
    place: a hard link renamed over `previous`. On a file system without hard links, a rename
    (then, until the new file is renamed in, only `previous` holds a checkpoint)."""
    path, previous = Path(path), Path(previous)
    if not path.is_file():
        return
    link = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
    except OSError:
        os.replace(path, previous)
        return
    os.replace(link, previous)


def rng_states():
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
