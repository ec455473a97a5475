"""Load weights from other formats through declarative key maps (SPEC §9).

A format is a list of `(pattern, replacement, layout)` rules applied to each source key: the first
pattern that matches renames the key (`re.sub`) and `layout` turns the tensor into normfree's
layout. Everything is checked (missing, unexpected and mis-shaped keys) before the model is
touched, so a failed load leaves the model as it was.

Formats: normfree state dicts / files / training checkpoints, timm `dm_nfnet_*` checkpoints,
DeepMind's Haiku pickles (haiku.py turns them into normfree names first).
"""

import re
from pathlib import Path

import torch

from .checkpoint import CheckpointError


def _same(t):
    return t


def _conv1x1_to_linear(t):  # timm's SE is 1×1 convs: (O, I, 1, 1) → (O, I)
    return t.reshape(t.shape[0], -1)


def _flatten(t):  # timm's WS gain: (O, 1, 1, 1) → (O,)
    return t.flatten()


TIMM_RULES = [
    (r"\.attn_last\.(fc[12])\.weight$", r".se.\1.weight", _conv1x1_to_linear),
    (r"\.attn_last\.(fc[12])\.bias$", r".se.\1.bias", _same),
    (r"\.skipinit_gain$", ".skip_gain", _same),
    (r"\.gain$", ".gain", _flatten),
    (r".*", r"\g<0>", _same),
]

FORMATS = {"timm": TIMM_RULES, "normfree": [(r".*", r"\g<0>", _same)]}


def detect_format(state_dict):
    if any(k.endswith("skipinit_gain") or ".attn_last." in k for k in state_dict):
        return "timm"
    return "normfree"


def convert_state_dict(state_dict, fmt):
    """Rename keys and re-lay tensors from `fmt` into normfree's names and layouts."""
    out = {}
    for key, tensor in state_dict.items():
        for pattern, replacement, layout in FORMATS[fmt]:
            if re.search(pattern, key):
                out[re.sub(pattern, replacement, key)] = layout(tensor)
                break
    return out


def read_state_dict(source):
    """A state dict from a path (.safetensors, or a torch file read with weights_only=True)."""
    from . import haiku
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
        if haiku.is_haiku_pickle(path):
            return haiku.haiku_state_dict(haiku.read_haiku_file(path))
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(path)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: "
                                  f"{str(e)[:200]})") from None
    if isinstance(state, dict) and "model" in state and "config" in state:
        state = state["model"]  # a normfree training checkpoint
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
    from .models import VARIANTS
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


def infer_variant(state):
    """The NFNet-F* variant (or its "+" twin) whose depths and stem width a state dict has."""
    from .models import VARIANTS
    depths = _depths(state)
    stem_width = state["stem.conv4.weight"].shape[0] if "stem.conv4.weight" in state else None
    for name, cfg in VARIANTS.items():
        if name.startswith("nfnet_f") and tuple(cfg.depths) == depths \
                and cfg.stem_widths[-1] == stem_width:
            return name
    raise CheckpointError(f"cannot tell the variant of weights with stage depths {depths}; "
                          "pass --model NAME")


def convert_file(src, dst, model_name=None):
    """Haiku, timm or normfree weights → a normfree `.safetensors` with metadata (returned)."""
    import hashlib

    from .checkpoint import export_weights
    from .pretrained import load_pretrained
    src = Path(src)
    pretrained = load_pretrained(src, model_name, device="cpu")
    digest = hashlib.sha256()
    with src.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    metadata = {"model": pretrained.name, "numerics": pretrained.numerics,
                "num_classes": len(pretrained.classes), "classes": list(pretrained.classes),
                "source": src.name, "source_format": pretrained.source_format,
                "source_sha256": digest.hexdigest(), "preprocessing": pretrained.preprocessing}
    export_weights(pretrained.model, dst, metadata)
    return metadata
