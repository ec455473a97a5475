"""Weights into models, strictly: read a state dict from any supported file, rename it through
the key maps, and load it with every missing, unexpected or mis-shaped key named. Everything is
checked before the model is touched, so a failed load leaves the model as it was."""

import pickle
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import safetensors.torch
import torch

from ..errors import CheckpointError
from ..nn.variants import VARIANTS
from ..nn.zoo import build_model
from . import haiku
from .keymaps import convert_state_dict, detect_format

# The keys by which a normfree training checkpoint is told from other PyTorch files and its
# weights found; training/checkpoints.py owns the format and writes them under these names.
CHECKPOINT_WEIGHTS, CHECKPOINT_CONFIG = "model", "config"


def file_kind(path):
    """"pickle", "safetensors", "torch" (zip checkpoint), "numpy" (.npz archive), "damaged zip"
    or "unknown", from the file's bytes, whatever its name."""
    with Path(path).open("rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte header length starts with 0x80, a pickle's first byte,
    # whenever the length is 128 modulo 256
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"  # an 8-byte header length, then the JSON header
    if head[:1] == b"\x80":
        return "pickle"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return "damaged zip"
        return "torch" if any(n.endswith("data.pkl") for n in names) else (
            "numpy" if names and all(n.endswith(".npy") for n in names) else "unknown")
    return "unknown"


def load_torch_file(path, map_location="cpu", lazily=False):
    """`torch.load(weights_only=True)` with errors that name the file and what it is not.

    The records' checksums are checked first; `lazily` maps the tensors instead of reading
    them, and checks nothing (for a glance at a large checkpoint's small entries)."""
    kind = file_kind(path)
    if kind == "numpy":
        raise CheckpointError(f"{path}: a numpy .npz archive of arrays, not a weights file "
                              "normfree reads (DeepMind's F*_haiku.npz are pickles despite the "
                              "name; save other arrays as a PyTorch state dict)")
    if kind == "damaged zip":
        raise CheckpointError(f"{path}: a damaged or truncated zip archive (PyTorch checkpoints "
                              "and numpy archives are zip files)")
    if kind != "torch":
        raise CheckpointError(f"{path}: not a weights file normfree can read (expected a "
                              "PyTorch checkpoint, a .safetensors file or a Haiku pickle)")
    if not lazily:
        check_crcs(path)
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles: our errors say more
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=lazily)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: holds Python objects other than tensors and plain "
                              "containers; normfree does not unpickle those (it could run code "
                              "from the file)") from None
    except Exception as e:  # torch raises many types for truncated or damaged files
        raise CheckpointError(f"{path}: a damaged or truncated PyTorch checkpoint "
                              f"({type(e).__name__})") from None


def check_crcs(path):
    """Refuse a zip file (a PyTorch checkpoint) whose records fail their CRC-32: torch's reader
    does not check them, and a flipped byte in tensor data would load without complaint.
    Reading 860 MB costs about 0.25 s when the file is cached (docs/benchmarks.md)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        raise CheckpointError(f"{path}: a damaged or truncated zip archive ({e})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged: its record {bad} fails its checksum (CRC-32)")


def read_state_dict(source):
    """A state dict from a path (Haiku pickle, .safetensors, PyTorch checkpoint)."""
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
        kind = file_kind(path)
        if kind == "pickle":
            return haiku.haiku_state_dict(haiku.read_haiku_file(path))
        if kind == "safetensors":
            try:
                state = safetensors.torch.load_file(path)
            except Exception as e:  # safetensors raises its own types for damaged files
                raise CheckpointError(f"{path}: a damaged .safetensors file ({e})") from None
        else:
            state = load_torch_file(path)
    if isinstance(state, dict) and CHECKPOINT_WEIGHTS in state and CHECKPOINT_CONFIG in state:
        state = state[CHECKPOINT_WEIGHTS]  # a normfree training checkpoint
    for key in ("state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CheckpointError(f"{source if not isinstance(source, dict) else 'state dict'}: "
                              "expected a mapping of parameter names to tensors")
    return state


def _depths(keys):
    """Blocks per stage found among `stages.{s}.{b}.` keys."""
    blocks = {}
    for key in keys:
        m = re.match(r"stages\.(\d+)\.(\d+)\.", key)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            blocks[s] = max(blocks.get(s, 0), b + 1)
    return tuple(blocks[s] for s in sorted(blocks))


def _variant_hint(keys, model):
    found = _depths(keys)
    mine = tuple(model.cfg.depths)
    if found == mine:
        return ""
    names = [n for n, c in VARIANTS.items() if tuple(c.depths) == found]
    held = f" ({' or '.join(names[:4])})" if names else ""
    return (f"; the weights hold a model with stage depths {found}{held}, this model has "
            f"{mine} ({getattr(model, 'name', type(model).__name__)})")


def load_weights(model, source, fmt=None):
    """Load `source` (path or state dict; normfree or timm format) into `model`, strictly.

    Raises `CheckpointError` naming every missing, unexpected or mis-shaped key; the model is
    unchanged when it does.
    """
    state = read_state_dict(source)
    fmt = fmt or detect_format(state)
    state = convert_state_dict(state, fmt)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                       for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or misshaped:
        parts = [f"{label} ({len(items)}): {', '.join(items[:8])}"
                 + (" ..." if len(items) > 8 else "")
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("mis-shaped", misshaped)) if items]
        raise CheckpointError(f"weights ({fmt} format) do not fit the model: "
                              + "; ".join(parts) + _variant_hint(state, model))
    model.load_state_dict(state, strict=True)
    return model


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def _variant_shapes(name, num_classes, in_chans):
    """Parameter names and shapes of a variant, from a model built on the meta device."""
    with torch.device("meta"):
        model = build_model(name, num_classes, in_chans=in_chans)
    return _shapes(model.state_dict())


def _differences(found, expected):
    """The tensors in which a file (`found`) and a variant (`expected`) differ, described."""
    missing = [f"{k} (missing)" for k in expected if k not in found]
    extra = [f"{k} (not in the variant)" for k in found if k not in expected]
    shapes = [f"{k} {found[k]} vs {expected[k]}" for k in found
              if k in expected and found[k] != expected[k]]
    return missing + extra + shapes


def infer_variant(state):
    """The variant whose parameter names and shapes a normfree-named state dict has exactly,
    found among the variants with its stage depths; an error names the nearest variants and
    the tensors that differ when none or several fit."""
    if "head.fc.weight" not in state or "stem.conv1.weight" not in state:
        raise CheckpointError("no stem.conv1 / head.fc weights: not a whole classifier")
    size = (state["head.fc.weight"].shape[0], state["stem.conv1.weight"].shape[1])
    found, depths = _shapes(state), _depths(state)
    candidates = [n for n, c in VARIANTS.items() if tuple(c.depths) == depths] or sorted(
        VARIANTS, key=lambda n: _depth_distance(VARIANTS[n].depths, depths))[:3]
    differences = {n: _differences(found, _variant_shapes(n, *size)) for n in candidates}
    exact = [n for n, diff in differences.items() if not diff]
    if len(exact) == 1:
        return exact[0]
    if exact:
        raise CheckpointError(f"weights fit {' and '.join(exact)} alike; name one with --model")
    nearest = sorted(differences, key=lambda n: len(differences[n]))[:3]
    described = "; ".join(f"{n}: {len(differences[n])} tensors differ, e.g. "
                          + ", ".join(differences[n][:3]) for n in nearest)
    raise CheckpointError(f"weights of an unknown architecture (stage depths {depths}); "
                          f"nearest known variants: {described}")


def _depth_distance(a, b):
    return abs(len(a) - len(b)) * 100 + sum(abs(x - y) for x, y in zip(a, b))
