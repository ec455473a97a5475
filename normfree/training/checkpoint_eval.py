"""How a run measures accuracy (flip TTA, evaluation precision, memory format), the protocol
and preprocessing it records, and the evaluation of a finished run's checkpoint."""

from dataclasses import replace
from pathlib import Path

from ..data.batches import Normalize
from ..data.datasets import make_data
from ..data.spec import DataSpec
from ..errors import ConfigError
from ..evaluation import evaluate, protocol
from ..runtime import default_device
from ..weights.metadata import check_layout
from ..weights.pretrained import reference_preprocessing
from .checkpoints import read_checkpoint
from .config import from_dict
from .model_setup import memory_format, model_for
from .run_folder import CHECKPOINT
from .specs import ModelSpec, spec_from


def evaluate_as_configured(cfg, model, batches, normalize, what="validation images",
                           sum_across=None):
    """`evaluate` with the run's flip TTA, precision and memory format (`sum_across`: see
    `evaluate`)."""
    return evaluate(model, batches, normalize, tta_flip=cfg.tta_flip,
                    precision=cfg.eval_precision or cfg.precision,
                    memory_format=memory_format(cfg), what=what, sum_across=sum_across)


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
    model = model_for(spec_from(ModelSpec, cfg), data)
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
