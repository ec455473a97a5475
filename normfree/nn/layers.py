"""Channel attention (squeeze-excite, ECA) and stochastic depth as NF networks use them
(docs/architecture.md §5)."""

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class SqueezeExcite(nn.Module):
    """Squeeze-excite gate times 2, with a plain (unscaled) ReLU as in the reference code."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        for fc in (self.fc1, self.fc2):
            std = fc.in_features ** -0.5  # LeCun truncated normal, cut at ±2σ (Haiku's default)
            nn.init.trunc_normal_(fc.weight, 0.0, std, -2 * std, 2 * std)
            nn.init.zeros_(fc.bias)

    def forward(self, x):
        return x * self.gate(x)

    def gate(self, x):
        """The (N, C, 1, 1) multipliers for `x`; NF blocks fold them into the skip-gain multiply."""
        s = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))
        return (2.0 * torch.sigmoid(s))[:, :, None, None]


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al. 2020): a gate per channel from a 1-D conv across the pooled channels,
    times 2 (the NF attention gain), as timm's L-family NFNets use it."""

    def __init__(self, channels, kernel_size):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x):
        return x * self.gate(x)

    def gate(self, x):
        s = self.conv(x.mean(dim=(2, 3))[:, None, :])
        return (2.0 * torch.sigmoid(s))[:, 0, :, None, None]


class StochasticDepth(nn.Module):
    """Drops the residual branch per example with probability `rate` (training only).

    The reference does not rescale kept examples; timm divides them by 1 − rate (`rescale=True`).
    """

    def __init__(self, rate, rescale=False):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"stochastic depth rate must be in [0, 1), got {rate}")
        self.rate, self.rescale = rate, rescale

    def forward(self, x):
        mask = self.mask_for(x)
        return x if mask is None else x * mask

    def mask_for(self, x):
        """The per-example multipliers (N, 1, 1, 1) for a batch like `x`, or None when nothing
        is dropped; NF blocks fold them into their skip-gain multiply instead of a full pass."""
        if not self.training or self.rate == 0.0:
            return None
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype)
        mask.bernoulli_(keep)
        if self.rescale:
            mask.div_(keep)
        return mask

    def extra_repr(self):
        return f"rate={self.rate}, rescale={self.rescale}"
