"""`TrainConfig`, its named presets, and the command-line flags generated from its fields."""

import argparse
import math
import re
import dataclasses
import typing
from dataclasses import dataclass, field, fields
from typing import Optional

from ..data import FMNIST_DIR, PIPELINES, RANDAUGMENT_MAGNITUDES
from ..errors import ConfigError
from ..nn.variants import list_models
from ..precisions import PRECISIONS


def _flag(default, description=None):
    """A field whose `description` is shown by its generated command-line flag."""
    return field(default=default, metadata={"description": description})


@dataclass
class TrainConfig:
    # model
    model: Optional[str] = _flag("nfnet_s0", "variant name (normfree list); none: the variant "
                                 "--init-from holds")
    numerics: Optional[str] = _flag(None, "deepmind | timm; none: --init-from's, else deepmind")
    dropout: Optional[float] = _flag(None, "before the classifier; none: the model's own")
    stochastic_depth: Optional[float] = _flag(None, "drop-path rate, rising linearly from 0 "
                                              "over the blocks; none: the model's own")
    skip_init: Optional[bool] = _flag(None, "skip gains start at 0 (SkipInit); none: the "
                                      "model's own")
    init_from: Optional[str] = _flag(None, "weights to fine-tune (Haiku, timm or normfree file, "
                                     "or hf-hub:OWNER/NAME; the classifier is replaced if the "
                                     "classes differ)")
    freeze: Optional[str] = _flag(None, "modules kept fixed, e.g. stem,stages.0")
    # data
    dataset: str = _flag("fashion-mnist", "fashion-mnist | folder | synthetic")
    data_dir: Optional[str] = _flag(None, f"none: {FMNIST_DIR}; folder: a directory with "
                                    "train/ (optionally val/, test/) class folders")
    val_size: int = _flag(5000, "images held out of the training set for model selection")
    image_size: Optional[int] = _flag(28, "folder and synthetic data; none: the model's train "
                                      "size")
    in_chans: int = _flag(3, "channels of synthetic images")
    synthetic_size: int = _flag(2048, "images in the synthetic training set")
    classes: Optional[tuple] = _flag(None, "Fashion-MNIST / synthetic: train and evaluate on "
                                     "these class indices only (e.g. 0,1,2,3,4), relabelled "
                                     "0, 1, ... in this order; none: all")
    train_per_class: Optional[int] = _flag(None, "a class-balanced training subset of this many "
                                           "images per class (drawn with --seed); none: all")
    bad_images: str = _flag("skip", "unreadable files in a folder: skip | stop")
    # augmentation
    pipeline: str = _flag("torchvision", "folder data's input pipeline: torchvision (random-"
                          "resized crop, its RandAugment, MixUp/CutMix on the device) | "
                          "reference (DeepMind's: its crop and bicubic resize, per-image "
                          "MixUp+CutMix of 2 source images per image, then its RandAugment)")
    crop_padding: int = _flag(2, "random crop after zero-padding by this many pixels")
    flip: bool = _flag(True, "random horizontal flips")
    randaugment: Optional[tuple] = _flag(None, "LAYERS,MAGNITUDE, e.g. 4,5")
    random_erasing: float = _flag(0.0, "probability of erasing a random rectangle")
    mixup_alpha: float = _flag(0.0, "MixUp on half of each batch (CutMix on the other)")
    cutmix_alpha: float = _flag(0.0, "CutMix on half of each batch (MixUp on the other)")
    small_image_scale: Optional[float] = _flag(None, "progressive resizing: train the first "
                                               "steps on batches downscaled by this factor "
                                               "(0.7: 28 → 20 px); none: off")
    small_image_until: float = _flag(0.3, "with --small-image-scale: the share of the learning "
                                     "rate's decay (after the warm-up) run on small images")
    label_smoothing: float = _flag(0.1)
    test_size: Optional[int] = _flag(None, "folder data: evaluate on the centre S×S crop of "
                                     "the whole image resized to (S+32)²; none: the model's "
                                     "test size, or --image-size for models without one")
    tta_flip: bool = _flag(True, "evaluate on each image and its mirror image")
    eval_precision: Optional[str] = _flag("fp32", "autocast of validation and test: fp32 | bf16 "
                                          "| fp16; none: --precision's")
    eval_every: int = _flag(1, "validate every N epochs, and after the last; 0: only "
                             "after the last")
    # optimisation
    epochs: int = _flag(16)
    steps: Optional[int] = _flag(None, "optimizer steps in all, the last epoch possibly partial; "
                                 "none: epochs × steps an epoch")
    time_budget: Optional[str] = _flag(None, "wall-clock budget of the whole run (e.g. 15m, "
                                       "2h): sets --steps after timing the first steps, and "
                                       "again at each epoch's end")
    batch_size: int = _flag(128, "global batch, over all processes and accumulation steps")
    device_batch_size: Optional[int] = _flag(None, "micro-batch each process computes at once; "
                                             "below --batch-size / processes, gradients "
                                             "accumulate over micro-batches into one update; "
                                             "none: the whole per-process batch")
    eval_batch_size: int = _flag(500)
    optimizer: str = _flag("sgd", "sgd (Nesterov) | adamw")
    lr: Optional[float] = _flag(0.2, "peak learning rate, after the linear warm-up (absolute; "
                                "none: from --lr-base)")
    lr_base: Optional[float] = _flag(None, "peak learning rate per 256 images: the peak is "
                                     "LR_BASE × batch / 256, as the reference scales it")
    momentum: float = _flag(0.9, "SGD momentum")
    weight_decay: float = _flag(5e-5, "on weights only; coupled for SGD, decoupled for AdamW")
    warmup_epochs: float = _flag(1.0)
    clip_factor: float = _flag(0.04, "AGC λ; 0 turns AGC off")
    agc_eps: float = _flag(1e-3, "AGC ε: the smallest weight norm a unit's clip uses")
    ema_decay: float = _flag(0.999, "largest EMA decay of the weights; 0 turns the EMA off")
    sam_rho: Optional[float] = _flag(None, "Sharpness-Aware Minimization's radius ρ; none: "
                                     "no SAM")
    sam_fraction: float = _flag(0.2, "with --sam-rho: the share of each process's batch the "
                                "ascent step uses (unsynchronised across processes)")
    # execution
    seed: int = _flag(0)
    device: Optional[str] = _flag(None, "none: cuda if available, else cpu")
    precision: Optional[str] = _flag(None, "fp32 | bf16 | fp16 (autocast; fp16 with loss "
                                     "scaling); none: bf16 where the hardware has it natively, "
                                     "else fp16 on CUDA, else fp32")
    channels_last: Optional[bool] = _flag(None, "channels_last memory format; none: on, but on "
                                          "CUDA off for models with grouped convolutions")
    grad_checkpointing: bool = _flag(False, "recompute stage activations in backward")
    compile: bool = _flag(False, "torch.compile the training forward/backward")
    threads: int = _flag(0, "CPU threads; 0: all cores")
    workers: Optional[int] = _flag(None, "image-decoding processes for folder data; none: "
                                   "min(4, cores)")
    out_dir: Optional[str] = _flag(None, "none: runs/<model>-<time>")
    resume: bool = _flag(False, "continue the run in --out-dir from its last checkpoint, or "
                         "start it")
    checkpoint_every: int = _flag(0, "also checkpoint every N steps; 0: at epoch ends only")
    tensorboard: bool = _flag(False, "also write TensorBoard scalars (pip install "
                              "normfree[tensorboard])")
    progress: bool = _flag(True, "progress bar per epoch")

    def __post_init__(self):
        for name, (valid, rule) in _RULES.items():
            value = getattr(self, name)
            if value is not None and not valid(value):
                raise ConfigError(f"--{name.replace('_', '-')} must be {rule}, got {value!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got "
                                  f"{value!r}")
        budget = self.time_budget
        if budget is not None and not (parse_duration(budget) or 0) > 0:
            raise ConfigError(f"--time-budget must be a duration like 15m, 1h30m or 90s, got "
                              f"{budget!r}")
        if (self.lr is None) == (self.lr_base is None):
            raise ConfigError("give one of --lr (the absolute peak rate) and --lr-base (the peak "
                              f"rate per 256 images), got --lr {self.lr} --lr-base {self.lr_base}")
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed():
                raise ConfigError(f"--{name.replace('_', '-')} must be one of "
                                  f"{', '.join(allowed())}, got {value!r}")
        _check_augmentation(self)


def _check_augmentation(cfg):
    """Refuse what the chosen input pipeline cannot do, and a test size below the crop."""
    if cfg.randaugment:
        low, high = RANDAUGMENT_MAGNITUDES[cfg.pipeline]
        if not low <= cfg.randaugment[1] < high:
            raise ConfigError(f"--randaugment {cfg.randaugment[0]},{cfg.randaugment[1]}: the "
                              f"{cfg.pipeline} pipeline's RandAugment magnitude must be in "
                              f"[{low:g}, {high:g})")
    if cfg.test_size and cfg.image_size and cfg.test_size < cfg.image_size:
        raise ConfigError(f"--test-size {cfg.test_size} is below the training crop "
                          f"--image-size {cfg.image_size}: evaluate at the crop size or larger")
    if cfg.pipeline != "reference":
        return
    if cfg.dataset != "folder":
        raise ConfigError(f"--pipeline reference reads image folders (--dataset folder), got "
                          f"--dataset {cfg.dataset}")
    if (cfg.mixup_alpha or cfg.cutmix_alpha) and not (cfg.mixup_alpha and cfg.cutmix_alpha == 1):
        raise ConfigError("--pipeline reference mixes as DeepMind's code does, MixUp and CutMix "
                          "together (its CutMix box area is uniform: --cutmix-alpha 1) or "
                          f"neither, got --mixup-alpha {cfg.mixup_alpha:g} --cutmix-alpha "
                          f"{cfg.cutmix_alpha:g}")
    if cfg.random_erasing:
        raise ConfigError("--pipeline reference has no random erasing: pass --random-erasing 0")


# Values no run can use, refused when a config is made: field → (check, the rule in words).
_RULES = {
    **dict.fromkeys(("epochs", "steps", "batch_size", "device_batch_size", "eval_batch_size",
                     "in_chans", "test_size",
                     "image_size", "synthetic_size", "train_per_class"),
                    (lambda v: v >= 1, "at least 1")),
    **dict.fromkeys(("val_size", "eval_every", "crop_padding", "mixup_alpha", "cutmix_alpha",
                     "weight_decay", "warmup_epochs", "clip_factor", "agc_eps", "threads",
                     "checkpoint_every", "workers"),
                    (lambda v: v >= 0, "0 or more")),
    **dict.fromkeys(("dropout", "stochastic_depth", "label_smoothing", "momentum", "ema_decay"),
                    (lambda v: 0 <= v < 1, "in [0, 1)")),
    "random_erasing": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "small_image_scale": (lambda v: 0 < v < 1, "in (0, 1)"),
    "small_image_until": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "randaugment": (lambda v: len(v) == 2 and min(v) >= 0,
                    "LAYERS,MAGNITUDE (two whole numbers, e.g. 2,9)"),
    "classes": (lambda v: len(v) >= 2 and len(set(v)) == len(v) and min(v) >= 0,
                "two or more distinct class indices, e.g. 0,1,2,3,4"),
    **dict.fromkeys(("lr", "lr_base", "sam_rho"), (lambda v: v > 0, "positive")),
    "sam_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
}

# String fields and the values they take (functions: the model list is built on demand).
_CHOICES = {
    "model": list_models,
    "numerics": lambda: ("deepmind", "timm"),
    "dataset": lambda: ("fashion-mnist", "folder", "synthetic"),
    "optimizer": lambda: ("sgd", "adamw"),
    "bad_images": lambda: ("skip", "stop"),
    "pipeline": lambda: PIPELINES,
    "precision": lambda: PRECISIONS,
    "eval_precision": lambda: PRECISIONS,
}


DEFAULT_PRESET = "fmnist"  # what `normfree train` and `make train` run

# NFNet-F0 … F6 on ImageNet: RandAugment magnitude and dropout per variant (the reference's
# experiment_nfnets.py); train/test sizes are the variants' own (nn/variants.py).
_IMAGENET_MAGNITUDE = (5, 10, 10, 15, 15, 15, 15)
_IMAGENET_DROPOUT = (0.2, 0.3, 0.4, 0.4, 0.5, 0.5, 0.5)


def _imagenet_recipe(n):
    """The reference's ImageNet configuration of NFNet-F`n` (docs/architecture.md §11)."""
    return dict(model=f"nfnet_f{n}", dataset="folder", pipeline="reference",
                image_size=None, test_size=None,
                epochs=360, batch_size=4096, lr=None, lr_base=0.1, weight_decay=2e-5,
                warmup_epochs=5, clip_factor=0.01, ema_decay=0.99999,
                randaugment=(4, _IMAGENET_MAGNITUDE[n]), mixup_alpha=0.2, cutmix_alpha=1.0,
                val_size=0, tta_flip=False, eval_precision="fp32", label_smoothing=0.1,
                dropout=_IMAGENET_DROPOUT[n], stochastic_depth=0.25,
                **(dict(sam_rho=0.05, sam_fraction=0.2) if n == 6 else {}))


# The papers' fine-tuning recipe (docs/architecture.md §11: warm-up, cosine, wd 1e-5, dropout
# 0.25, drop-path 0.1, EMA) at a small-data scale; needs --init-from, --data-dir. The paper
# fine-tuned with SAM after JFT pre-training: `finetune-sam`.
_FINETUNE = dict(model=None, dataset="folder", image_size=None, epochs=10, batch_size=32, lr=0.01,
                 weight_decay=1e-5, warmup_epochs=1.0, dropout=0.25, stochastic_depth=0.1,
                 ema_decay=0.999)

PRESETS = {
    # No dropout/drop-path (they cost more than they give on a 20-epoch schedule), random
    # erasing instead; skip gains start at 1, since SkipInit's 0 makes this 5-block network
    # learn slowly early on. Validating only after the last epoch (where raw vs EMA is chosen)
    # gives training the time earlier validations took. The run lasts 15 minutes all
    # inclusive, however fast the machine (--epochs or --steps instead: that length).
    # nfnet_s0_dense: nfnet_s0's step time on a CPU and more accuracy per epoch (dense 3×3s,
    # full-resolution stem). The first 30 % of the decay at 20 px (progressive resizing) buys
    # epochs in the 15 minutes. What each choice measured: docs/results.md, "The numbers
    # behind the presets' comments", and the sections it points to.
    "fmnist": dict(model="nfnet_s0_dense", dropout=0.0, stochastic_depth=0.0, skip_init=False,
                   random_erasing=0.25, compile=True, time_budget="15m", eval_every=0,
                   small_image_scale=0.7, eval_precision=None),
    # Decay 1e-4 and erasing 0.5 against the overfitting of 5e-5 / 0.25; 5e-4 shrinks the
    # scale-free weights until AGC clips most units; dropout / drop-path tie on test and lose
    # on validation. Two hours all inclusive. Measured: docs/results.md, "fmnist-long".
    "fmnist-long": dict(model="nfnet_s1", time_budget="2h", random_erasing=0.5,
                        weight_decay=1e-4, ema_decay=0.9995, eval_every=5, compile=True,
                        eval_precision=None),
    "finetune": _FINETUNE,
    "finetune-sam": {**_FINETUNE, "sam_rho": 0.05, "sam_fraction": 0.2},
    "debug": dict(model="nfnet_tiny", dataset="synthetic", image_size=16, synthetic_size=512,
                  val_size=128, epochs=2, batch_size=32, eval_batch_size=128, ema_decay=0.9,
                  crop_padding=0, warmup_epochs=0.5, lr=0.05, precision="fp32",
                  tta_flip=False),
    # The reference ImageNet recipes (docs/architecture.md §11, the table of every setting):
    # batch 4096 over the devices there are, accumulated where they hold less
    # (--device-batch-size); the peak rate 0.1 per 256 images follows the batch; precision:
    # the hardware's. F6 trains with SAM, as the paper's best F6 did (docs/architecture.md §10).
    **{f"imagenet-f{n}": _imagenet_recipe(n) for n in range(7)},
}


_UNITS = {"h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text):
    """Seconds of "15m", "2h", "1h30m", "90s" or "900" (seconds); None if unreadable."""
    text = str(text).strip().lower().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.fullmatch(text)
    if not text or not match or not any(match.groups()):
        return None
    return sum(float(v) * unit for v, unit in zip(match.groups(), _UNITS.values()) if v)


def preset(name, **overrides):
    """A `TrainConfig` from a named preset plus overrides (unknown keys are an error)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    if {"epochs", "steps"} & set(overrides) and "time_budget" not in overrides:
        values["time_budget"] = None  # a length given replaces the preset's budget
    for given, other in (("lr", "lr_base"), ("lr_base", "lr")):
        if given in overrides and other not in overrides:
            values[other] = None  # one way of stating the peak rate replaces the other
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown TrainConfig field(s) {unknown}")
    return TrainConfig(**values)


def _base_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _parser_for(annotation, name):
    base = _base_type(annotation)
    optional = type(None) in typing.get_args(annotation)

    def parse(text):
        if optional and text.lower() == "none":
            return None
        try:
            if base is tuple:
                return tuple(int(v) for v in text.split(","))
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name}: cannot read {text!r} as "
                                             f"{base.__name__}") from None
    return parse


def add_config_flags(parser, shown_preset=DEFAULT_PRESET):
    """One flag per `TrainConfig` field; an absent flag leaves the preset's value. The help
    shows `shown_preset`'s values (by default those of a run without --preset)."""
    hints = typing.get_type_hints(TrainConfig)
    shown = preset(shown_preset)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(shown, f.name)
        value = ",".join(map(str, value)) if isinstance(value, tuple) else value
        if f.name in ("epochs", "steps") and shown.time_budget:
            value = "set by --time-budget"
        text = " ".join(filter(None, [f.metadata["description"], f"({shown_preset}: "
                                      f"{'none' if value is None else value})"]))
        if _base_type(hints[f.name]) is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=_parser_for(hints[f.name], flag[2:]),
                                default=argparse.SUPPRESS,
                                metavar=_base_type(hints[f.name]).__name__.upper(),
                                help=text)


def given_flags(args):
    """The `TrainConfig` fields set on the command line (absent flags are not in `args`)."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}


def config_from_args(args):
    return preset(args.preset, **given_flags(args))


def describe(cfg, columns=3):
    """The settings that differ from `TrainConfig`'s defaults, as aligned `flag value` columns
    (every setting is in the run's config.json)."""
    default = TrainConfig()
    unused = {"epochs"} if cfg.time_budget or cfg.steps else set()  # they set the length
    items = [(f"--{f.name.replace('_', '-')}", _text(getattr(cfg, f.name))) for f in fields(cfg)
             if getattr(cfg, f.name) != getattr(default, f.name) and f.name not in unused]
    if not items:
        return "  (TrainConfig's defaults)"
    width = max(len(k) for k, _ in items)
    cells = [f"{k:<{width}} {v}" for k, v in items]
    cell = max(map(len, cells)) + 2
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    return "\n".join("  " + "".join(c.ljust(cell) for c in row).rstrip() for row in rows)


def _text(value):
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def to_dict(cfg):
    return dataclasses.asdict(cfg)


def peak_lr(cfg):
    """The learning rate after the warm-up: --lr, or --lr-base scaled by the batch."""
    return cfg.lr if cfg.lr_base is None else cfg.lr_base * cfg.batch_size / 256


def from_dict(values):
    known = {f.name for f in fields(TrainConfig)}
    if "bf16" in values and "precision" not in values:  # written before --precision
        bf16 = values["bf16"]
        values = {**values, "precision": None if bf16 is None else "bf16" if bf16 else "fp32"}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()
              if k in known}
    return TrainConfig(**values)
