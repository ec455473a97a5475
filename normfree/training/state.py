"""`Run`: everything one training process works with, and where it has got to; the schedule
(learning rate, image size) it is at follows from its config, step and plan."""

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..data.batches import Normalize
from . import distributed
from .budget import Budget, Plan
from .config import TrainConfig, peak_lr
from .optim import EMA, lr_at, warmup_steps
from .logs import MetricsLog
from .resizing import is_small, small_size
from .sam import SAM


@dataclass
class Run:
    """Everything one training process works with, and where it has got to."""

    cfg: TrainConfig
    started: float  # time.time() when the run would have started, had it never stopped
    procs: distributed.Processes
    device: torch.device
    out: Path
    data: Any
    model: nn.Module
    forward: Any  # the model as train steps call it: DDP-wrapped and compiled where asked
    optimizer: torch.optim.Optimizer
    ema: Optional[EMA]
    mix: Any
    normalize: Normalize
    micro_batch: int  # images a process computes at once (gradients accumulate over them)
    scaler: Optional[torch.amp.GradScaler]  # fp16's loss scaling
    no_sync: Any = contextlib.nullcontext  # DDP: a micro-batch that does not all-reduce
    skipped_steps: int = 0  # updates fp16's loss scaling skipped (a gradient overflowed)
    sam: Optional[SAM] = None  # Sharpness-Aware Minimization around each update
    log: Optional[MetricsLog] = None
    step: int = 0
    epoch: int = 0
    selected: Optional[tuple] = None  # ("raw" or "ema", validation top-1) at the last validation
    budget: Optional[Budget] = None  # a budgeted run's planner
    plan: Optional[Plan] = None  # what a budgeted run measured and chose
    image_size: Optional[int] = None  # of the last step's batch (a new size compiles anew)

    @property
    def steps_per_epoch(self):
        return len(self.data.train)

    @property
    def total_steps(self):
        """Steps of the whole run; None while a budgeted run has not yet timed its steps."""
        if self.cfg.steps:
            return self.cfg.steps
        return None if self.cfg.time_budget else self.cfg.epochs * self.steps_per_epoch

    @property
    def num_epochs(self):
        total = self.total_steps
        return None if total is None else math.ceil(total / self.steps_per_epoch)

    @property
    def warmup_steps(self):
        return warmup_steps(self.cfg, self.steps_per_epoch)

    def lr(self):
        """The schedule's rate at this step (while the length is unknown: warm-up, then the
        peak rate)."""
        return lr_at(self.step, peak_lr(self.cfg), self.warmup_steps,
                     self.total_steps or math.inf,
                     self.plan and self.plan.bend)

    def train_image_size(self):
        """The size of this step's batch: small early on with progressive resizing."""
        small = is_small(self.cfg, self.step, self.warmup_steps, self.total_steps,
                         self.plan and self.plan.bend)
        return small_size(self.cfg, self.data.image_size) if small else self.data.image_size
