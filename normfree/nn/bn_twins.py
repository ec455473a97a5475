"""Batch-norm twins of the NF models, for NF-vs-BN comparisons and signal-propagation plots.

A twin has the NF model's topology (stem, widths, groups, strides, SE, stochastic depth, head)
with pre-activation batch norm instead of NF's ingredients: plain convs (He init, no WS, no bias),
unscaled activations, no α, β or skip gain. `order` chooses where BN sits in each pre-activation:
"bn_act" (BN → act → conv, He et al. 2016) or "act_bn" (act → BN → conv).
"""

from torch import nn

from ..errors import ConfigError
from .activations import Activation
from .layers import StochasticDepth
from .network import (Bottleneck, BranchOutput, Downsample, Head, ImageClassifier, add_attention,
                      build_stages)
from .padding import MaxPoolSame, SameConv2d

ORDERS = ("bn_act", "act_bn")


def preactivation(channels, activation, order):
    norm, act = nn.BatchNorm2d(channels), Activation(activation)
    return nn.Sequential(norm, act) if order == "bn_act" else nn.Sequential(act, norm)


def plain_conv(in_channels, out_channels, kernel_size, stride=1, groups=1):
    conv = SameConv2d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=False)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    return conv


class BNBlock(Bottleneck):
    def __init__(self, cfg, plan, order):
        super().__init__()
        act = cfg.activation
        self.downsample = None
        if plan.stride > 1 or plan.in_channels != plan.out_channels:
            pool = plan.stride > 1 and cfg.shortcut_avg_pool
            self.downsample = Downsample(pool, plain_conv(plan.in_channels, plan.out_channels, 1,
                                                          1 if pool else plan.stride))
        self.conv1 = plain_conv(plan.in_channels, plan.width, 1)
        self.conv2 = plain_conv(plan.width, plan.width, 3, plan.stride, plan.groups)
        self.conv2b = (plain_conv(plan.width, plan.width, 3, 1, plan.groups)
                       if cfg.second_conv else None)
        self.conv3 = plain_conv(plan.width, plan.out_channels, 1)
        widths = [plan.in_channels, plan.width, plan.width if cfg.second_conv else 0, plan.width]
        self.preacts = nn.ModuleList(preactivation(w, act, order) if w else nn.Identity()
                                     for w in widths)
        add_attention(self, cfg, plan)
        self.residual = BranchOutput()
        self.drop_path = StochasticDepth(plan.drop_rate, cfg.stochastic_depth_rescale)

    def preact(self, index, x):
        return self.preacts[index](x)

    def forward(self, x):
        out, gate, shortcut = self.branch_and_shortcut(x)
        out = BranchOutput.value(self.residual(out, gate))
        return self.drop_path(out) + shortcut


class BNNet(ImageClassifier):
    """Pre-activation BN network with the topology of an `NFConfig`."""

    def __init__(self, cfg, num_classes=1000, order="bn_act"):
        super().__init__()
        if order not in ORDERS:
            raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
        self.cfg, self.num_classes, self.order = cfg, num_classes, order
        stem, in_channels = nn.Sequential(), cfg.in_chans
        for i, (width, stride) in enumerate(zip(cfg.stem_widths, cfg.stem_strides)):
            if i:
                stem.add_module(f"pre{i + 1}", preactivation(in_channels, cfg.activation, order))
            stem.add_module(f"conv{i + 1}", plain_conv(in_channels, width, cfg.stem_kernel,
                                                       stride))
            in_channels = width
        if cfg.stem_max_pool:
            stem.add_module("pool", MaxPoolSame(3, 2))
        self.stem = stem
        self.stages = build_stages(cfg, lambda plan: BNBlock(cfg, plan, order))
        channels = cfg.widths[-1]
        self.final_conv = None
        if cfg.final_channels:
            self.final_pre = preactivation(channels, cfg.activation, order)
            self.final_conv = plain_conv(channels, cfg.final_channels, 1)
            channels = cfg.final_channels
        self.post = preactivation(channels, cfg.activation, order)
        self.num_features = channels
        self.head = Head(channels, num_classes, cfg.dropout, cfg.classifier_init)

    def forward_features(self, x):
        x = self.forward_stages(x)[-1]
        if self.final_conv is not None:
            x = self.final_conv(self.final_pre(x))
        return self.post(x)
