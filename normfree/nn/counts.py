"""Parameter and multiply-accumulate counts from a config alone, without building the model or
importing torch (`normfree list` prints every variant in a moment).

They follow the model classes layer by layer; tests/unit/nn/test_models.py checks them against
the built models (`zoo.count_params`, `zoo.count_macs`) for every kind of variant.
"""

import math
from dataclasses import dataclass

from .config import attention_hidden, eca_kernel_size, plan_blocks


@dataclass
class Tally:
    params: int = 0
    macs: int = 0

    def conv(self, in_channels, out_channels, kernel, size, groups=1, bias=True, gain=True):
        """A conv producing a size×size map; WS convs have a bias and a gain per channel."""
        weights = kernel * kernel * in_channels // groups * out_channels
        self.params += weights + out_channels * (int(bias) + int(gain))
        self.macs += weights * size * size

    def linear(self, in_features, out_features):
        self.params += in_features * out_features + out_features
        self.macs += in_features * out_features

    def norm(self, channels):  # batch norm's affine weight and bias
        self.params += 2 * channels


def count(cfg, num_classes=1000, image_size=None, batch_norm=False):
    """(parameters, MACs at `image_size`, default the test size) of the NF network `cfg`, or
    with `batch_norm` of its BN twin."""
    tally, size = Tally(), image_size or cfg.test_size
    conv = dict(bias=False, gain=False) if batch_norm else dict(gain=cfg.weight_standardization)
    in_channels = cfg.in_chans
    for i, (width, stride) in enumerate(zip(cfg.stem_widths, cfg.stem_strides)):
        if i and batch_norm:
            tally.norm(in_channels)
        size = math.ceil(size / stride)
        tally.conv(in_channels, width, cfg.stem_kernel, size, **conv)
        in_channels = width
    if cfg.stem_max_pool:
        size = math.ceil(size / 2)
    for plan in plan_blocks(cfg):
        size = _block(tally, cfg, plan, size, conv, batch_norm)
    channels = cfg.widths[-1]
    if cfg.final_channels:
        if batch_norm:
            tally.norm(channels)
        tally.conv(channels, cfg.final_channels, 1, size, **conv)
        channels = cfg.final_channels
    if batch_norm:
        tally.norm(channels)
    tally.linear(channels, num_classes)
    return tally.params, tally.macs


def _block(tally, cfg, plan, size, conv, batch_norm):
    """Add one block (`NFBlock` or `BNBlock`); returns its output size."""
    out_size = math.ceil(size / plan.stride)
    if plan.stride > 1 or plan.in_channels != plan.out_channels:
        tally.conv(plan.in_channels, plan.out_channels, 1, out_size, **conv)
    tally.conv(plan.in_channels, plan.width, 1, size, **conv)
    tally.conv(plan.width, plan.width, 3, out_size, plan.groups, **conv)
    if cfg.second_conv:
        tally.conv(plan.width, plan.width, 3, out_size, plan.groups, **conv)
    tally.conv(plan.width, plan.out_channels, 1, out_size, **conv)
    channels = plan.width if cfg.se_on_bottleneck else plan.out_channels
    if cfg.attention == "se":
        hidden = attention_hidden(cfg, channels)
        tally.linear(channels, hidden)
        tally.linear(hidden, channels)
    elif cfg.attention == "eca":  # a 1-D conv across the pooled channels, no bias
        kernel = eca_kernel_size(channels)
        tally.params += kernel
        tally.macs += kernel * channels
    if batch_norm:  # pre-activations of the block input and of each bottleneck conv's input
        for channels in (plan.in_channels, plan.width, plan.width if cfg.second_conv else 0,
                         plan.width):
            tally.norm(channels)
    elif cfg.skip_gain:
        tally.params += 1
    return out_size


def activation_sizes(cfg, image_size):
    """(largest, total) elements of one image's layer outputs at `image_size`: lower bounds on
    what inference holds at once (the largest) and what training keeps for backward (all)."""
    size = image_size
    sizes = [cfg.in_chans * size * size]
    for width, stride in zip(cfg.stem_widths, cfg.stem_strides):
        size = math.ceil(size / stride)
        sizes.append(width * size * size)
    if cfg.stem_max_pool:
        size = math.ceil(size / 2)
        sizes.append(cfg.stem_widths[-1] * size * size)
    for plan in plan_blocks(cfg):
        out_size = math.ceil(size / plan.stride)
        sizes += [plan.width * size * size, plan.width * out_size * out_size,
                  plan.out_channels * out_size * out_size]
        size = out_size
    return max(sizes), sum(sizes)
