"""Checkpoints: one self-describing file, written atomically, read without unpickling code.

A checkpoint holds the model (from the unwrapped module), optimizer, EMA, step counters, the
resolved config and RNG states. It is written to a temporary file in the same directory, fsynced
and `os.replace`d, so a crash or a full disk never leaves a half-written file under the real name.
Loading uses `torch.load(weights_only=True)`: tensors and plain containers only.
"""

import json
import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, truncated, foreign or for another model."""


def atomic_write(path, write):
    """Call `write(file_object)` on a temp file next to `path`, fsync it, then rename it."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # full disk, read-only or missing directory, ...
            raise CheckpointError(f"cannot write {path}: {e.strerror or e}; nothing was "
                                  "replaced (the previous file, if any, is kept)") from None
        raise


def save_checkpoint(path, state):
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable normfree checkpoint (truncated or "
                              f"foreign file?): {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a normfree training checkpoint (expected a dict "
                              "with 'model' and 'config' entries)")
    return state


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


def save_json(path, values):
    atomic_write(path, lambda f: f.write((json.dumps(values, indent=2) + "\n").encode()))


def export_weights(model, path, metadata):
    """Weights-only `.safetensors` (no pickle) with string metadata (model name, classes...)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": "normfree", **metadata, "layout": layout_of(model)}
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, lambda f: f.write(save(tensors, metadata)))
