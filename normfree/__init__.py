"""normfree: normalizer-free networks (NFNets, NF-ResNets, NF-RegNets) for PyTorch."""

from .agc import adaptive_clip_grad_, param_groups
from .config import TrainConfig
from .convert import load_weights
from .deploy import export_onnx, fold_ws
from .models import VARIANTS, NFConfig, block_betas
from .pretrained import load_pretrained, predict
from .train import train
from .zoo import count_macs, count_params, create_model, list_models

__all__ = ["NFConfig", "TrainConfig", "VARIANTS", "adaptive_clip_grad_", "block_betas",
           "count_macs", "count_params", "create_model", "export_onnx", "fold_ws",
           "list_models", "load_pretrained", "load_weights", "param_groups", "predict", "train"]
__version__ = "0.1.0"
