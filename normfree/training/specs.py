"""The parts of a `TrainConfig` that each part of a run reads (docs/architecture.md §14).

`TrainConfig` stays flat: it is the command line's record (its fields make the flags, the
help and config.json). Each floor owns the part it reads, a frozen spec whose field names are
the record's: `data/` its `DataSpec` (augmentation and mixing included), the training step its
`StepSpec`, the schedule its `ScheduleSpec`, evaluation its `EvaluationSpec`, and how the run is
carried out its `ExecutionSpec`; `ModelSpec` is the network and where its weights start.
`spec_from` is the one place that splits the record. Every field of the record is in exactly
one spec (tested), and the lists of settings by role (what a resumed run may change, what its
speed records ignore) are drawn from the specs' fields.
"""

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Optional

from ..data.spec import UNTIMED, DataSpec


def _untimed():
    return field(metadata=UNTIMED)


@dataclass(frozen=True)
class ModelSpec:
    """The network and the weights it starts from."""

    model: Optional[str]
    numerics: Optional[str]
    dropout: Optional[float]
    stochastic_depth: Optional[float]
    skip_init: Optional[bool]
    init_from: Optional[str]
    freeze: Optional[str]


@dataclass(frozen=True)
class StepSpec:
    """One update: the optimizer (AGC's λ and ε go into its parameter groups), the loss, the
    precision, SAM and the EMA of the weights. The batch mixer comes from the data's
    `AugmentSpec`."""

    optimizer: str
    lr: Optional[float] = _untimed()
    lr_base: Optional[float] = _untimed()
    momentum: float = _untimed()
    weight_decay: float = _untimed()
    clip_factor: float
    agc_eps: float
    ema_decay: float
    sam_rho: Optional[float]
    sam_fraction: float
    label_smoothing: float = _untimed()
    precision: Optional[str]


@dataclass(frozen=True)
class ScheduleSpec:
    """How long the run trains, the learning rate's warm-up, when it validates, its wall-clock
    budget and progressive resizing."""

    epochs: int = _untimed()
    steps: Optional[int] = _untimed()
    time_budget: Optional[str] = _untimed()
    warmup_epochs: float = _untimed()
    eval_every: int
    small_image_scale: Optional[float]
    small_image_until: float = _untimed()


@dataclass(frozen=True)
class EvaluationSpec:
    """How validation and test measure accuracy (the crop is the data's `test_size`)."""

    tta_flip: bool
    eval_precision: Optional[str]


@dataclass(frozen=True)
class ExecutionSpec:
    """How the run is carried out, not what it computes: device, threads, compiling, memory
    format, micro-batches, where it writes, resuming, checkpoints and logs."""

    device: Optional[str]
    threads: int
    compile: bool
    channels_last: Optional[bool]
    grad_checkpointing: bool
    device_batch_size: Optional[int]
    out_dir: Optional[str] = _untimed()
    resume: bool = _untimed()
    checkpoint_every: int = _untimed()
    tensorboard: bool = _untimed()
    progress: bool = _untimed()


SPECS = (ModelSpec, DataSpec, StepSpec, ScheduleSpec, EvaluationSpec, ExecutionSpec)


def spec_from(spec_class, record):
    """The `spec_class` part of `record` (a `TrainConfig`): its fields' values, nested specs
    (the data's augmentation) built alike."""
    return spec_class(**{f.name: spec_from(f.type, record) if is_dataclass(f.type)
                         else getattr(record, f.name) for f in fields(spec_class)})


def record_fields(spec_class):
    """The `TrainConfig` fields `spec_class` holds, nested specs' included."""
    return [leaf for f in fields(spec_class)
            for leaf in (record_fields(f.type) if is_dataclass(f.type) else [f])]


def field_names(*spec_classes):
    """The names of the record's fields in `spec_classes`."""
    return frozenset(f.name for spec in spec_classes for f in record_fields(spec))


# What a resumed run may change: how it executes, and two settings that other floors read for
# doing their work, not for what it computes: the step's precision (a run may move to hardware
# without bf16) and the number of image-decoding processes.
CHANGEABLE_ON_RESUME = field_names(ExecutionSpec) | {"precision", "workers"}
# What a budgeted run's speed record ignores (budget.py): runs that differ only in these take
# the same time a step, a validation and to start.
UNTIMED_FIELDS = frozenset(f.name for spec in SPECS for f in record_fields(spec)
                           if f.metadata == UNTIMED)
