"""An NF architecture as data: the `NFConfig` dataclass, and the signal bookkeeping (β, α) and
block plan every model class builds from it (docs/architecture.md §4-§6)."""

import math
from dataclasses import dataclass, fields
from typing import NamedTuple, Optional

from ..errors import ConfigError
from .gamma import ACTIVATION_NAMES


_CHOICES = {"ws_eps": ("clamp", "add"), "classifier_init": ("normal", "zeros"),
            "attention": ("se", "eca", None), "gamma_placement": ("activation", "conv"),
            "padding": ("same", "symmetric")}


@dataclass(frozen=True)
class NFConfig:
    """One NF architecture. Every field names a real difference between the model families."""

    depths: tuple
    widths: tuple
    strides: tuple = (1, 2, 2, 2)
    alpha: float = 0.2
    activation: str = "gelu"
    bottleneck_ratio: float = 0.5       # block width = int(base · ratio) ...
    bottleneck_from_input: bool = False  # ... base = in_channels (RegNet) or out_channels
    first_block_ratio: Optional[float] = None  # RegNet: ratio of the network's first block
    group_width: Optional[int] = 128    # width rounded down to groups of this; None: dense 3×3
    channel_divisor: int = 1            # 1: widths rounded down (papers); 8: timm's rounding
    second_conv: bool = True            # NFNet's extra grouped 3×3 (conv2b)
    attention: Optional[str] = "se"     # "se" (squeeze-excite), "eca" (timm's L family), None
    se_ratio: float = 0.5               # SE hidden width = channels · ratio, rounded
    se_on_bottleneck: bool = False      # RegNet: attention after the 3×3, not at the block end
    shortcut_avg_pool: bool = True      # strided shortcut: avg-pool + 1×1, else strided 1×1
    stem_widths: tuple = (16, 32, 64, 128)
    stem_strides: tuple = (2, 1, 1, 2)
    stem_kernel: int = 3
    stem_max_pool: bool = False
    final_channels: int = 3072          # final 1×1 conv width; 0: none
    dropout: float = 0.2
    stochastic_depth: float = 0.25
    stochastic_depth_rescale: bool = False  # timm divides kept examples by 1 − rate
    ws_eps: str = "clamp"               # "clamp": reference, "add": timm
    weight_standardization: bool = True  # False: plain He-initialised convs (for SPP studies)
    skip_gain: bool = True              # a learnable skip gain per block (timm's own: none)
    skip_init: bool = True              # the branch starts switched off (SkipInit): skip gain
    #                                     0, or without one the last conv's gain 0; False: 1
    gamma_placement: str = "activation"  # where γ applies: after every activation (papers), or
    #                                      "conv": in every WS conv, none after the last act (timm)
    padding: str = "same"               # "same": TensorFlow's (papers); "symmetric": PyTorch's
    classifier_init: str = "normal"     # N(0, 0.01), or "zeros" (NF-RegNet)
    in_chans: int = 3
    train_size: int = 224
    test_size: int = 224

    def __post_init__(self):
        n = len(self.depths)
        for name in ("widths", "strides"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"NFConfig.{name} needs {n} entries (one per stage), "
                                 f"got {getattr(self, name)}")
        if len(self.stem_strides) != len(self.stem_widths):
            raise ConfigError("NFConfig.stem_strides needs one entry per stem_widths entry")
        if self.activation not in ACTIVATION_NAMES:
            raise ConfigError(f"NFConfig.activation must be one of {sorted(ACTIVATION_NAMES)}, "
                             f"got {self.activation!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"NFConfig.{name} must be one of "
                                 f"{', '.join(map(repr, choices))}, got {getattr(self, name)!r}")
        if self.group_width and self.group_width % self.channel_divisor:
            raise ConfigError("NFConfig.group_width must be a multiple of channel_divisor")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.stochastic_depth < 1.0:
            raise ConfigError("NFConfig.dropout and stochastic_depth must be in [0, 1)")
        if self.in_chans < 1 or min(self.depths) < 1:
            raise ConfigError("NFConfig.in_chans and every depth must be at least 1")

    @property
    def total_stride(self):
        return math.prod(self.stem_strides) * (2 if self.stem_max_pool else 1) * math.prod(
            self.strides)


class BlockPlan(NamedTuple):
    in_channels: int
    out_channels: int
    width: int
    groups: int
    stride: int
    beta: float
    drop_rate: float


def round_channels(value, divisor, floor=0.9):
    """`value` channels as a whole number: rounded down (divisor 1, the papers), or to the
    nearest multiple of `divisor`, at least `divisor` and, when `floor` > 0, not below
    `floor` · value (timm's rule)."""
    if divisor == 1:
        return int(value)
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < floor * value else rounded


def attention_hidden(cfg, channels):
    """The hidden width of a squeeze-excite over `channels` (timm rounds with no floor)."""
    return max(1, round_channels(channels * cfg.se_ratio, cfg.channel_divisor, floor=0.0))


def eca_kernel_size(channels):
    """ECA's 1-D kernel size over C channels: int((log2 C + 1) / 2), made odd by adding 1,
    at least 3 (Wang et al. 2020, as timm computes it)."""
    k = int(abs(math.log(channels, 2) + 1) / 2)  # math.log, not log2: timm's rounding
    return max(k if k % 2 else k + 1, 3)


def block_betas(depths, alpha):
    """β (= 1/expected input std) of every block, in order (docs/architecture.md §4)."""
    betas, expected_std = [], 1.0
    for depth in depths:
        for index in range(depth):
            betas.append(1.0 / expected_std)
            if index == 0:  # a transition block's shortcut resets the variance
                expected_std = 1.0
            expected_std = (expected_std ** 2 + alpha ** 2) ** 0.5
    return betas


def plan_blocks(cfg):
    """Channels, widths, groups, strides, β and drop rates of every block
    (docs/architecture.md §4-§5)."""
    betas = block_betas(cfg.depths, cfg.alpha)
    num_blocks = len(betas)
    plans, in_channels = [], cfg.stem_widths[-1]
    for depth, out_channels, stride in zip(cfg.depths, cfg.widths, cfg.strides):
        for index in range(depth):
            i = len(plans)
            ratio = cfg.bottleneck_ratio
            if i == 0 and cfg.first_block_ratio is not None:
                ratio = cfg.first_block_ratio
            base = in_channels if cfg.bottleneck_from_input else out_channels
            width = round_channels(base * ratio, cfg.channel_divisor)
            groups = 1
            if cfg.group_width:
                groups = width // cfg.group_width
                if groups == 0:
                    raise ConfigError(f"block {i}: width {width} is below group_width "
                                      f"{cfg.group_width}")
                width = groups * cfg.group_width
            plans.append(BlockPlan(in_channels, out_channels, width, groups,
                                   stride if index == 0 else 1, betas[i],
                                   cfg.stochastic_depth * i / num_blocks))
            in_channels = out_channels
    return plans


def split_stages(plans, depths):
    """The block plans of each stage."""
    start = 0
    for depth in depths:
        yield plans[start:start + depth]
        start += depth


CONFIG_FIELDS = tuple(f.name for f in fields(NFConfig))
