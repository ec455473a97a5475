"""normfree: normalizer-free networks (NFNets, NF-ResNets, NF-RegNets) for PyTorch.

The public API, each name imported on first use (so that `normfree --help` starts without
torch); the package layout is described in docs/architecture.md §14.
"""

import importlib

__version__ = "0.1.0"

_API = {  # public name → the module defining it
    "NFConfig": "nn.config", "block_betas": "nn.config", "VARIANTS": "nn.variants",
    "list_models": "nn.variants", "create_model": "weights.pretrained", "count_params": "nn.zoo",
    "count_macs": "nn.zoo", "adaptive_clip_grad_": "training.agc",
    "param_groups": "training.agc", "TrainConfig": "training.config",
    "preset": "training.config", "train": "training.loop",
    "export_onnx": "weights.deploy", "fold_ws": "weights.deploy",
    "load_weights": "weights.loading", "load_pretrained": "weights.pretrained",
    "predict": "weights.pretrained",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'normfree' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_API})
