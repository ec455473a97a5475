"""What a training run is built from: its resolved config, model (fresh, fine-tuned from
weights, partly frozen, compiled), output directory, and the metadata its exported weights carry.
"""

import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from ..data.batches import Normalize
from ..data.datasets import make_data
from ..data.spec import DataSpec
from ..errors import CheckpointError, ConfigError
from ..evaluation import evaluate, protocol
from ..nn.counts import activation_sizes
from ..nn.variants import get_config
from ..nn.zoo import build_model
from ..runtime import (check_precision, default_device, default_precision,
                       refuse_unaffordable)
from ..weights.metadata import check_layout
from ..weights.pretrained import load_pretrained, reference_preprocessing
from .checkpoints import read_checkpoint
from .config import from_dict
from .run_folder import CHECKPOINT
from .specs import spec_from


def model_for(cfg, data):
    """The run's model: `cfg.model` sized for the data, with the config's regularisation."""
    overrides = {k: getattr(cfg, k) for k in ("dropout", "stochastic_depth", "skip_init")
                 if getattr(cfg, k) is not None}
    return build_model(cfg.model, len(data.classes), numerics=cfg.numerics or "deepmind",
                        in_chans=data.in_chans, **overrides)


def resolve_config(cfg, device, saved=None):
    """Fill the automatic (None) fields, so the saved config replays the run exactly; when
    resuming, as the `saved` config resolved them.

    Returns the config and, with `init_from` on a fresh run, the loaded source model.
    """
    source = None
    if saved is not None:
        cfg = replace(cfg, **{k: saved[k] for k in ("model", "numerics", "image_size", "steps")
                              if getattr(cfg, k) is None and k in saved})
    if cfg.precision is None:
        cfg = replace(cfg, precision=default_precision(device))
    check_precision(cfg.precision, device)
    if cfg.eval_precision is not None:
        check_precision(cfg.eval_precision, device)
    if cfg.init_from and saved is None:
        source = load_pretrained(cfg.init_from, cfg.model, device)
        cfg = replace(cfg, model=source.name, numerics=cfg.numerics or source.numerics)
    if cfg.model is None:
        raise ConfigError("--model: none given and no --init-from weights to take it from")
    if cfg.test_size is None and cfg.dataset == "folder":
        # the model's own pair of sizes, or evaluation at the size given for training
        model = get_config(cfg.model)
        cfg = replace(cfg, test_size=cfg.image_size or model.test_size)
    if cfg.image_size is None:  # the size the weights were trained at, else the model's
        cfg = replace(cfg, image_size=(source and source.train_size)
                      or get_config(cfg.model).train_size)
    if cfg.channels_last is None:
        cfg = replace(cfg, channels_last=channels_last_pays(cfg.model, device))
    return cfg, source


def channels_last_pays(model_name, device):
    """channels_last, but on CUDA for models without grouped convolutions only: timm's training
    benchmark (RTX 3090, PyTorch 1.12) has dm_nfnet_f0 training 2.4× slower in channels_last,
    because of its grouped convolutions, and no GPU has measured normfree's yet
    (scripts/gpu_check.sh times both)."""
    return device.type != "cuda" or not get_config(model_name).group_width


def micro_batch_size(cfg, world_size):
    """How many images each process computes at once: --device-batch-size, or its whole part of
    the global batch. The global batch must be a whole number of micro-batches on every
    process."""
    micro = cfg.device_batch_size or max(cfg.batch_size // world_size, 1)
    if cfg.batch_size % (world_size * micro):
        processes = f"{world_size} process{'es' if world_size > 1 else ''}"
        given = (f"{processes} × --device-batch-size {micro}" if cfg.device_batch_size
                 else processes)
        raise ConfigError(f"--batch-size {cfg.batch_size} (the global batch) must be a multiple "
                          f"of {given} = {world_size * micro}")
    return micro


def refuse_unaffordable_run(cfg, device, world_size=1):
    """Refuse sizes (image, batch, synthetic set) whose memory this machine surely lacks, before
    anything allocates: a lower bound from the layer outputs alone (`activation_sizes`)."""
    largest, total = activation_sizes(get_config(cfg.model), cfg.image_size)
    kept = 2 * largest if cfg.grad_checkpointing else total  # what backward needs kept
    micro = cfg.device_batch_size or -(-cfg.batch_size // world_size)
    train = micro * kept * (2 if cfg.precision in ("bf16", "fp16") else 4)
    evaluation = cfg.eval_batch_size * 2 * largest * 4
    synthetic = cfg.synthetic_size * cfg.in_chans * cfg.image_size ** 2 if (
        cfg.dataset == "synthetic") else 0
    refuse_unaffordable(max(train, evaluation) + synthetic, device,
                        f"--image-size {cfg.image_size} with --batch-size {cfg.batch_size}, "
                        f"--eval-batch-size {cfg.eval_batch_size}"
                        + (f" and --synthetic-size {cfg.synthetic_size}" if synthetic else ""))


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
            raise ConfigError(f"--freeze: the model has no module {name!r}; its top-level "
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
    # a static graph for each batch size (progressive resizing has two), like the one the
    # step was measured with, rather than the any-size graph a second size makes by default
    return torch.compile(model, dynamic=False)


def preprocessing_of(cfg, data):
    """How `predict`/`eval --weights` must prepare images for this run's model."""
    pre = reference_preprocessing(data.test_size, data.in_chans, data.mean, data.std,
                                  "reference" if cfg.pipeline == "reference" else "squash")
    if cfg.dataset != "folder":  # in-memory datasets are already at their size
        pre.update(resize=data.image_size, interpolation="bilinear", resize_mode="squash")
    return pre


def protocol_of(cfg, data, weights):
    """How the run measures accuracy (`evaluation.protocol`) with `weights` ("raw", "ema")."""
    return protocol(data.test_size, preprocessing_of(cfg, data)["resize"], cfg.tta_flip,
                    weights, cfg.eval_precision or cfg.precision)


def memory_format(cfg):
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def evaluate_as_configured(cfg, model, batches, normalize, what="validation images",
                           sum_across=None):
    """`evaluate` with the run's flip TTA, precision and memory format (`sum_across`: see
    `evaluate`)."""
    return evaluate(model, batches, normalize, tta_flip=cfg.tta_flip,
                    precision=cfg.eval_precision or cfg.precision,
                    memory_format=memory_format(cfg), what=what, sum_across=sum_across)


def evaluate_checkpoint(path, data_dir=None, split="test", device=None, tta_flip=None):
    """Top-1/top-5 of the weights a run selected (EMA or raw) on its dataset's `split`, as the
    run measures (`tta_flip` None: the run's own flip TTA); `path` is the checkpoint or the
    run directory holding it."""
    if Path(path).is_dir():
        path = Path(path) / CHECKPOINT
    state = read_checkpoint(path)
    cfg = from_dict(state.config)
    if data_dir is not None:
        cfg = replace(cfg, data_dir=data_dir)
    if tta_flip is not None:
        cfg = replace(cfg, tta_flip=tta_flip)
    device = default_device(device)
    data = make_data(spec_from(DataSpec, cfg))
    model = model_for(cfg, data)
    weights = state.selected[0] if state.selected else "raw"
    check_layout(model, state.layout, path)
    model.load_state_dict(state.ema if weights == "ema" else state.model)
    model.to(device, memory_format=memory_format(cfg))
    batches = data.train_eval if split == "train" else getattr(data, split)
    if batches is None:
        raise ConfigError(f"the run has no {split} split to evaluate")
    result = evaluate_as_configured(cfg, model, batches,
                                    Normalize(data.mean, data.std).to(device), f"{split} images")
    return {**result, "weights": weights, "split": split, "checkpoint": str(path),
            "protocol": protocol_of(cfg, data, weights)}
