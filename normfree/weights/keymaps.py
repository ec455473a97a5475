"""Declarative key maps from other formats to normfree's names and layouts
(docs/architecture.md §9).

A format is a list of `(pattern, replacement, layout)` rules applied to each source key: the first
pattern that matches renames the key (`re.sub`) and `layout` turns the tensor into normfree's
layout. Formats: normfree itself, timm `dm_nfnet_*` checkpoints. DeepMind's Haiku pickles have
their own map (`haiku.py`), applied when they are read.
"""

import re


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
