"""normfree: normalizer-free networks (NFNets, NF-ResNets, NF-RegNets) for PyTorch.

The public API; the package layout is described in docs/architecture.md §14.
"""

from .nn.config import NFConfig, block_betas
from .nn.variants import VARIANTS, count_macs, count_params, create_model, list_models
from .training.agc import adaptive_clip_grad_, param_groups
from .training.config import TrainConfig
from .training.loop import train
from .weights.deploy import export_onnx, fold_ws
from .weights.loading import load_weights
from .weights.pretrained import load_pretrained, predict

__all__ = ["NFConfig", "TrainConfig", "VARIANTS", "adaptive_clip_grad_", "block_betas",
           "count_macs", "count_params", "create_model", "export_onnx", "fold_ws",
           "list_models", "load_pretrained", "load_weights", "param_groups", "predict", "train"]
__version__ = "0.1.0"
