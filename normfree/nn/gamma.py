"""γ of each activation (docs/architecture.md §2): plain numbers, importable without torch."""

# The reference's constants, verbatim: they are what the released weights were trained with
# (0.03-0.09 % above the exact integrals, which tests/unit/nn/test_layers.py checks).
GAMMA = {
    "identity": 1.0,
    "relu": 1.7139588594436646,
    "gelu": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "elu": 1.2716004848480225,
    "celu": 1.270926833152771,
    "selu": 1.0008515119552612,
    "leaky_relu": 1.70590341091156,
    "relu6": 1.7131484746932983,
    "sigmoid": 4.803835391998291,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
    "log_sigmoid": 1.9193484783172607,
    "soft_sign": 2.338853120803833,
}
GAMMA["swish"] = GAMMA["silu"]

# Every activation name a config may use: the table's, and timm's exact (erf) GELU.
ACTIVATION_NAMES = (*GAMMA, "gelu_exact")


def gamma_of(name):
    """γ of an activation; timm's exact GELU uses the tanh GELU's constant, as timm does."""
    return GAMMA["gelu" if name == "gelu_exact" else name]
