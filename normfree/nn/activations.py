"""Activations by name and their γ (docs/architecture.md §2).

γ_f = 1/std(f(z)) for z ~ N(0, 1), so `f(x) · γ_f` keeps unit variance for unit-variance
Gaussian input. Inside blocks and stems normfree applies γ (and β) as the next conv's
`input_gain` rather than as a multiply of the activation map; `ScaledActivation` applies it
directly where no conv follows (the final activation).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .gamma import gamma_of

_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    """The reference's GELU (JAX's default): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    When compiled it is written as x·sigmoid(2·√(2/π)·(x + 0.044715·x³)), the same function up
    to float rounding (a few ulp): inductor's vectorised exp is cheaper than its tanh
    (docs/benchmarks.md)."""
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(x * (_GELU_K + _GELU_K * 0.044715 * x * x))
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "identity": lambda x: x,
    "relu": F.relu,
    "gelu": gelu_tanh,
    "gelu_exact": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "elu": F.elu,
    "celu": F.celu,
    "selu": F.selu,
    "leaky_relu": F.leaky_relu,  # slope 0.01, as in JAX
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "tanh": torch.tanh,
    "log_sigmoid": F.logsigmoid,
    "soft_sign": F.softsign,
}


class Activation(nn.Module):
    """The plain activation f, by name; its γ is applied by the consumer (`input_gain`)."""

    def __init__(self, name):
        super().__init__()
        if name not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
        self.name = name
        self.fn = ACTIVATIONS[name]
        self.gamma = gamma_of(name)

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return self.name


class ScaledActivation(Activation):
    """`f(x) · γ_f` (docs/architecture.md §2)."""

    def forward(self, x):
        return self.fn(x) * self.gamma

    def extra_repr(self):
        return f"{self.name}, gamma={self.gamma}"
