"""normfree: normalizer-free networks (NFNets, NF-ResNets, NF-RegNets) for PyTorch."""

from .models import NFConfig, VARIANTS, block_betas
from .zoo import count_macs, count_params, create_model, list_models

__all__ = ["NFConfig", "VARIANTS", "block_betas", "count_macs", "count_params", "create_model",
           "list_models"]
__version__ = "0.1.0"
