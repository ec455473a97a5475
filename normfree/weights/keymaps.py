"""Declarative key maps from other formats to normfree's names and layouts
(docs/architecture.md §9).

A format is a list of `(pattern, replacement, layout)` rules applied to each source key in order:
each pattern that matches renames the key (`re.sub`) and its `layout` turns the tensor towards
normfree's layout; keys no rule matches keep their names and tensors. Formats: normfree itself,
timm's NF checkpoints (`dm_nfnet_*`, the L family, NF-ResNet, NF-RegNet). DeepMind's Haiku
pickles have their own map (`haiku.py`), applied when they are read.
"""

import re


def _same(t):
    return t


def _conv1x1_to_linear(t):  # timm's SE is 1×1 convs: (O, I, 1, 1) → (O, I)
    return t.reshape(t.shape[0], -1)


def _flatten(t):  # timm's WS gain: (O, 1, 1, 1) → (O,)
    return t.flatten()


TIMM_RULES = [
    (r"\.attn(?:_last)?\.(fc[12])\.weight$", r".se.\1.weight", _conv1x1_to_linear),
    (r"\.attn(?:_last)?\.(fc[12])\.bias$", r".se.\1.bias", _same),
    (r"\.attn(?:_last)?\.conv\.weight$", r".eca.conv.weight", _same),
    (r"\.skipinit_gain$", ".skip_gain", _same),
    (r"^stem\.conv\.", "stem.conv1.", _same),  # single-conv stems (ResNet, RegNet)
    (r"\.gain$", ".gain", _flatten),
]

FORMATS = {"timm": TIMM_RULES, "normfree": []}


def detect_format(state_dict):
    """"timm" when any key or tensor has timm's form (attention names, skip gain name, a
    single-conv stem, (O, 1, 1, 1) WS gains), else "normfree"."""
    if any(k.endswith("skipinit_gain") or re.search(r"\.attn(_last)?\.|^stem\.conv\.", k)
           or k.endswith(".gain") and v.ndim == 4 for k, v in state_dict.items()):
        return "timm"
    return "normfree"


def convert_state_dict(state_dict, fmt):
    """Rename keys and re-lay tensors from `fmt` into normfree's names and layouts."""
    out = {}
    for key, tensor in state_dict.items():
        for pattern, replacement, layout in FORMATS[fmt]:
            if re.search(pattern, key):
                key, tensor = re.sub(pattern, replacement, key), layout(tensor)
        out[key] = tensor
    return out
