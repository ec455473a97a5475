"""NFNet, NF-ResNet and NF-RegNet as one block class and one network class (docs/architecture.md
§5), built from an `NFConfig`.

Papers: Brock et al. 2021 (NFNets, ICML) and Brock et al. 2021 (NF-ResNets, ICLR).

Differences from the reference implementation:
- Module names follow PyTorch/timm habits (`stem.conv1`, `stages.{s}.{b}.conv1..conv3`,
  `final_conv`, `head.fc`); the weights key maps rename the reference's Haiku names onto them.
- An NF block's end-of-block SE gate is multiplied into α · skip gain (a per-channel factor)
  rather than into the branch output: `x + (gate · α · g) · f` is one full-size multiply-add
  instead of two multiplies and an add; equal to the reference up to float rounding.
"""

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from .activations import Activation, ScaledActivation
from .config import attention_hidden, eca_kernel_size, plan_blocks, split_stages
from .gamma import gamma_of
from .layers import EfficientChannelAttention, SqueezeExcite, StochasticDepth
from .padding import AvgPoolSame, SameConv2d, max_pool
from .ws_conv import WSConv2d


def make_conv(cfg, in_channels, out_channels, kernel_size, stride=1, groups=1, gamma=1.0,
              beta=1.0):
    """A WS conv (or, without WS, a plain He-initialised conv) whose input is act(x)·γ·β.

    γ (the preceding activation's) and β are folded into the weight (`input_gain`). A plain conv
    is initialised so that its effective weight is He-normal for the unscaled activation.
    """
    if cfg.weight_standardization:
        return WSConv2d(in_channels, out_channels, kernel_size, stride, groups, cfg.ws_eps,
                        input_gain=gamma * beta, padding_rule=cfg.padding)
    conv = SameConv2d(in_channels, out_channels, kernel_size, stride, groups=groups,
                      input_gain=gamma * beta, padding_rule=cfg.padding)
    fan_in = conv.weight[0].numel()
    nn.init.normal_(conv.weight, 0.0, (2.0 / fan_in) ** 0.5 / gamma)
    nn.init.zeros_(conv.bias)
    return conv


class Downsample(nn.Module):
    """Projection shortcut: 1×1 conv, after a 2×2 avg pool when `pool` (else the conv strides)."""

    def __init__(self, pool, conv):
        super().__init__()
        self.pool = AvgPoolSame() if pool else None
        self.conv = conv

    def forward(self, x):
        return self.conv(x if self.pool is None else self.pool(x))


def add_attention(block, cfg, plan):
    """Give `block` its channel attention as `block.se` or `block.eca` (the other None)."""
    channels = plan.width if cfg.se_on_bottleneck else plan.out_channels
    block.se = (SqueezeExcite(channels, attention_hidden(cfg, channels))
                if cfg.attention == "se" else None)
    block.eca = (EfficientChannelAttention(channels, eca_kernel_size(channels))
                 if cfg.attention == "eca" else None)
    block.se_on_bottleneck = cfg.se_on_bottleneck


class BranchOutput(nn.Module):
    """A block's measurement point (docs/architecture.md §5.1): it passes the residual branch
    and its end-of-block gate (None without one) through unchanged, so a forward hook on it
    sees both while the block computes exactly what it computes unobserved;
    `BranchOutput.value(pair)` is the branch output f(x) = branch · gate."""

    def forward(self, branch, gate):
        return branch, gate

    @staticmethod
    def value(pair):
        branch, gate = pair
        return branch if gate is None else branch * gate


class Bottleneck(nn.Module):
    """Wiring shared by NF blocks and their BN twins: pre-activation, shortcut, 1×1, 3×3,
    (second 3×3), (attention), 1×1, (attention). Subclasses build the layers and define
    `preact(i, x)`."""

    @property
    def attention(self):
        """The block's squeeze-excite or ECA module, or None."""
        return self.se if self.se is not None else self.eca

    def branch_and_shortcut(self, x):
        a = self.preact(0, x)
        shortcut = x if self.downsample is None else self.downsample(a)
        out = self.conv_then_preact(self.conv1, 1, a)
        last = self.conv2
        if self.conv2b is not None:
            out, last = self.conv_then_preact(self.conv2, 2, out), self.conv2b
        attention = self.attention
        if attention is not None and self.se_on_bottleneck:
            out = self.preact(3, attention(last(out)))
        else:
            out = self.conv_then_preact(last, 3, out)
        out = self.conv3(out)
        gate = attention.gate(out) if attention is not None and not self.se_on_bottleneck else None
        # the branch output is out · gate; the subclass's forward passes both through
        # `residual`, then applies the gate and stochastic depth
        return out, gate, shortcut

    def conv_then_preact(self, conv, index, x):
        return self.preact(index, conv(x))


class NFBlock(Bottleneck):
    """`x + α · skip_gain · f(act(x) · β)`, with the NFNet, NF-ResNet or NF-RegNet branch f.

    Every activation here is the plain f: its γ (and β for the block input) is the `input_gain`
    of the conv it feeds.
    """

    def __init__(self, cfg, plan):
        super().__init__()
        self.alpha, self.beta = cfg.alpha, plan.beta
        self.act = Activation(cfg.activation)
        gamma = self.act.gamma
        self.downsample = None
        if plan.stride > 1 or plan.in_channels != plan.out_channels:
            pool = plan.stride > 1 and cfg.shortcut_avg_pool
            conv = make_conv(cfg, plan.in_channels, plan.out_channels, 1,
                             1 if pool else plan.stride, gamma=gamma, beta=plan.beta)
            self.downsample = Downsample(pool, conv)
        self.conv1 = make_conv(cfg, plan.in_channels, plan.width, 1, gamma=gamma, beta=plan.beta)
        self.conv2 = make_conv(cfg, plan.width, plan.width, 3, plan.stride, plan.groups, gamma)
        self.conv2b = (make_conv(cfg, plan.width, plan.width, 3, 1, plan.groups, gamma)
                       if cfg.second_conv else None)
        self.conv3 = make_conv(cfg, plan.width, plan.out_channels, 1, gamma=gamma)
        add_attention(self, cfg, plan)
        self.residual = BranchOutput()
        self.drop_path = StochasticDepth(plan.drop_rate, cfg.stochastic_depth_rescale)
        self.skip_gain = None
        if cfg.skip_gain:
            self.skip_gain = nn.Parameter(torch.tensor(0.0 if cfg.skip_init else 1.0))
        elif cfg.skip_init and isinstance(self.conv3, WSConv2d):
            nn.init.zeros_(self.conv3.gain)  # SkipInit without a skip gain, as timm does

    def preact(self, index, x):
        return self.act(x)  # × γ (and β) inside the next conv

    def conv_then_preact(self, conv, index, x):
        return conv(x, activation=self.act)  # fused into the conv where it can be

    def forward(self, x):
        out, gate, shortcut = self.branch_and_shortcut(x)
        out, gate = self.residual(out, gate)
        # the SE gate and the drop-path mask ride on the skip-gain multiply: one full-size
        # multiply-add per block (a separate gate multiply costs a pass forward, two backward)
        multiplier = self.alpha if self.skip_gain is None else self.skip_gain * self.alpha
        mask = self.drop_path.mask_for(out)
        if mask is not None:
            multiplier = mask * multiplier
        if gate is not None:
            multiplier = gate * multiplier
        if isinstance(multiplier, float):
            return torch.add(shortcut, out, alpha=multiplier)
        return torch.addcmul(shortcut, out, multiplier)

    @torch.no_grad()
    def fold_residual_scale_(self):
        """For inference: multiply α · skip gain into `conv3` (its gain if Scaled WS, else its
        weight, and its bias) and set both to 1, in place. Exact, because `conv3`'s output only
        feeds the residual sum, unless an end-of-block SE gate reads it (the gate is not linear
        in its input): such a block is left as it is. Returns whether it folded."""
        if self.attention is not None and not self.se_on_bottleneck:
            return False
        scale = self.alpha if self.skip_gain is None else self.skip_gain * self.alpha
        conv = self.conv3
        (conv.gain if isinstance(conv, WSConv2d) else conv.weight).mul_(scale)
        conv.bias.mul_(scale)
        if self.skip_gain is not None:
            self.skip_gain.fill_(1.0)
        self.alpha = 1.0
        return True


class Head(nn.Module):
    def __init__(self, in_features, num_classes, dropout, init):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)
        self.reset(num_classes, init)

    def reset(self, num_classes, init="normal"):
        fc = nn.Linear(self.fc.in_features, num_classes).to(self.fc.weight.device)
        if init == "zeros":
            nn.init.zeros_(fc.weight)
        else:
            nn.init.normal_(fc.weight, 0.0, 0.01)
        nn.init.zeros_(fc.bias)
        self.fc = fc

    def forward(self, x):
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


def check_input(x, cfg):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"expected an NCHW image batch (4 dims), got {shape}")
    if not x.is_floating_point():
        raise InputError(f"expected a floating-point input, got {x.dtype}")
    if x.shape[1] != cfg.in_chans:
        raise InputError(f"expected {cfg.in_chans} input channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)})")
    if min(x.shape[-2:]) < cfg.total_stride:
        raise InputError(f"input {tuple(x.shape[-2:])} is smaller than the network's total "
                         f"stride {cfg.total_stride}; use at least {cfg.total_stride} px")


class ImageClassifier(nn.Module):
    """`forward` = head(forward_features(x)), where the head is pool, dropout and `head.fc`."""

    grad_checkpointing = False

    def forward(self, x):
        return self.head(self.forward_features(x))

    def set_grad_checkpointing(self, enable=True):
        """Recompute each stage's activations in backward instead of storing them (timm's name):
        less memory for the large variants, about one more forward pass of time."""
        self.grad_checkpointing = enable

    def run_stage(self, stage, x):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)  # replays the dropout RNG
        return stage(x)

    def reset_classifier(self, num_classes):
        self.num_classes = num_classes
        self.head.reset(num_classes, self.cfg.classifier_init)

    def forward_stages(self, x):
        """The output of every stage, for detection/segmentation backbones (like timm's
        `features_only`); `feature_info` gives their channels and strides. These are residual
        streams, not activated: their scale grows within a stage (docs/architecture.md §4)."""
        check_input(x, self.cfg)
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = self.run_stage(stage, x)
            maps.append(x)
        return maps

    @property
    def feature_info(self):
        """[{"module", "channels", "reduction"}] of each `forward_stages` output."""
        cfg = self.cfg
        reduction = math.prod(cfg.stem_strides) * (2 if cfg.stem_max_pool else 1)
        info = []
        for i, (width, stride) in enumerate(zip(cfg.widths, cfg.strides)):
            reduction *= stride
            info.append({"module": f"stages.{i}", "channels": width, "reduction": reduction})
        return info


def build_stages(cfg, make_block):
    """`stages.{s}.{b}`: per stage, an `nn.Sequential` of `make_block(plan)` for its blocks."""
    return nn.Sequential(*(nn.Sequential(*map(make_block, stage_plans))
                           for stage_plans in split_stages(plan_blocks(cfg), cfg.depths)))


class Stem(nn.Sequential):
    """Convs with plain activations between them, then an optional pool; each activation is
    passed to the conv before it, which computes it inside the conv where it can."""

    def forward(self, x):
        layers, fused = list(self), False
        for layer, following in zip(layers, layers[1:] + [None]):
            if fused:  # this activation ran inside the previous conv
                fused = False
            elif isinstance(following, Activation) and hasattr(layer, "conv_weight"):
                x, fused = layer(x, activation=following), True
            else:
                x = layer(x)
        return x


class NFNet(ImageClassifier):
    """Stem → stages of NF blocks → (final conv, act) → pool, dropout, linear."""

    def __init__(self, cfg, num_classes=1000):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        # γ after every activation (the papers; the final one scales the features), or, in
        # timm's own models, in every conv whether an activation feeds it or not
        gamma_in_convs = cfg.gamma_placement == "conv"
        self.act = (Activation if gamma_in_convs else ScaledActivation)(cfg.activation)
        gamma = gamma_of(cfg.activation)
        stem, in_channels = Stem(), cfg.in_chans
        for i, (width, stride) in enumerate(zip(cfg.stem_widths, cfg.stem_strides)):
            if i:
                stem.add_module(f"act{i}", Activation(cfg.activation))
            stem.add_module(f"conv{i + 1}", make_conv(
                cfg, in_channels, width, cfg.stem_kernel, stride,
                gamma=gamma if i or gamma_in_convs else 1.0))
            in_channels = width
        if cfg.stem_max_pool:
            stem.add_module("pool", max_pool(cfg.padding))
        self.stem = stem
        self.stages = build_stages(cfg, lambda plan: NFBlock(cfg, plan))
        channels = cfg.widths[-1]
        self.final_conv = None
        if cfg.final_channels:
            self.final_conv = make_conv(cfg, channels, cfg.final_channels, 1,  # input: no act
                                        gamma=gamma if gamma_in_convs else 1.0)
            channels = cfg.final_channels
        self.num_features = channels
        self.head = Head(channels, num_classes, cfg.dropout, cfg.classifier_init)

    def forward_features(self, x):
        """Activated final feature map, (N, num_features, H/stride, W/stride)."""
        x = self.forward_stages(x)[-1]
        if self.final_conv is not None:
            x = self.final_conv(x)
        return self.act(x)
