"""What normfree writes beside the tensors of a weights file: the model's name, numerics,
classes, preprocessing and layout, as `.safetensors` string metadata (JSON values).

The layout record lets a load refuse weights of a variant laid out differently (strides,
pooling, activation), which would otherwise load without complaint and compute nonsense.
"""

import json
from pathlib import Path

import safetensors
import safetensors.torch

from ..errors import CheckpointError
from ..files import atomic_write


# Config fields that change what a model computes but not its parameter shapes: weights saved
# with other values would load without complaint and give wrong outputs.
LAYOUT_FIELDS = ("stem_strides", "strides", "stem_max_pool", "shortcut_avg_pool", "activation")


def layout_of(model):
    """The model's `LAYOUT_FIELDS`, JSON-ready; saved with its weights."""
    values = {k: getattr(model.cfg, k) for k in LAYOUT_FIELDS if hasattr(model.cfg, k)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def check_layout(model, saved, source):
    """Refuse weights saved from another layout of the same variant (`saved` None: a file from
    before layouts were recorded, or from another library; nothing to check)."""
    if not saved:
        return
    mine = layout_of(model)
    differ = [f"{k} {saved[k]} (this version: {mine[k]})" for k in mine
              if k in saved and saved[k] != mine[k]]
    if differ:
        raise CheckpointError(f"{source}: weights of a model laid out differently from this "
                              f"{model.name}: {'; '.join(differ)}. Load them with the normfree "
                              "version and variant that saved them, or retrain")


def export_weights(model, path, metadata):
    """Weights-only `.safetensors` (no pickle) with string metadata (model name, classes...)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": "normfree", **metadata, "layout": layout_of(model)}
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, lambda f: f.write(safetensors.torch.save(tensors, metadata)))


def read_metadata(path):
    """The string metadata of a `.safetensors` file, JSON values decoded; {} for other files."""
    if Path(path).suffix != ".safetensors":
        return {}
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from None
    values = {}
    for key, value in raw.items():
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values
