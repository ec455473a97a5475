"""TensorFlow 'SAME' padding for convs and pools (docs/architecture.md §7), and PyTorch's
symmetric padding for the models timm defined itself.

TF pads (p, p) or, when the total is odd (even input, stride 2), (p, p + 1) with the extra pixel
after. The padding is resolved once per input size and cached; a copy (`F.pad`) is made only when
the rule is asymmetric, which PyTorch's conv padding cannot express. The symmetric rule pads
((stride − 1) + dilation · (kernel − 1)) // 2 on both sides whatever the input size.
"""

import math

import torch.nn.functional as F
from torch import nn


def same_padding(size, kernel_size, stride, dilation=1):
    """TensorFlow 'SAME' padding of one spatial dim: (before, after), the extra pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def symmetric_padding(kernel_size, stride, dilation=1):
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


PADDING_RULES = ("same", "symmetric")


class SamePaddingMixin:
    """Resolves the padding (`padding_rule`: TF 'SAME', the default, or "symmetric") per input
    size once, as conv padding or as an explicit pad.

    `forward(x, activation)` also applies the activation that follows the conv, so that a
    subclass can compute it inside the conv (`WSConv2d`'s prepacked CPU path).
    """

    def _padding_for(self, height, width):
        key = (int(height), int(width))  # ints also when traced (ONNX export: fixed size)
        cached = self._padding_cache.get(key)
        if cached is None and self.padding_rule == "symmetric":
            cached = (tuple(symmetric_padding(k, s, d) for k, s, d in zip(
                self.kernel_size, self.stride, self.dilation)), None)
            self._padding_cache[key] = cached
        elif cached is None:
            pad_h = same_padding(key[0], self.kernel_size[0], self.stride[0], self.dilation[0])
            pad_w = same_padding(key[1], self.kernel_size[1], self.stride[1], self.dilation[1])
            if pad_h[0] == pad_h[1] and pad_w[0] == pad_w[1]:
                cached = ((pad_h[0], pad_w[0]), None)  # symmetric: the conv pads, no copy
            else:
                cached = ((0, 0), (pad_w[0], pad_w[1], pad_h[0], pad_h[1]))
            self._padding_cache[key] = cached
        return cached

    def forward(self, x, activation=None):
        """conv(x), then `activation` (an `Activation`) if given."""
        padding, explicit_pad = self._padding_for(x.shape[-2], x.shape[-1])
        if explicit_pad is not None:
            x = F.pad(x, explicit_pad)
        x, activation = self._convolve(x, padding, activation)
        return x if activation is None else activation(x)

    def _convolve(self, x, padding, activation):
        """(conv(x), the activation still to apply: None if it ran inside the conv)."""
        return F.conv2d(x, self.conv_weight(), self.bias, self.stride, padding, self.dilation,
                        self.groups), activation


class SameConv2d(SamePaddingMixin, nn.Conv2d):
    """A plain conv with TF 'SAME' (or symmetric) padding (BN twins, unstandardised NF convs,
    folded WS convs); `input_gain` multiplies the weight, as in `WSConv2d`."""

    def __init__(self, *args, input_gain=1.0, padding_rule="same", **kwargs):
        super().__init__(*args, **kwargs)
        self.input_gain, self.padding_rule = input_gain, padding_rule
        self._padding_cache = {}

    def conv_weight(self):
        return self.weight if self.input_gain == 1.0 else self.weight * self.input_gain


class MaxPoolSame(nn.Module):
    """3×3/2 max pool with TF 'SAME' padding (−inf), without copying the input.

    TF pads (p, p) or (p, p+1); PyTorch's padding=p gives the first, adding ceil_mode the second.
    """

    def __init__(self, kernel_size=3, stride=2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        pads = [same_padding(int(s), self.kernel_size, self.stride) for s in x.shape[-2:]]
        padding = tuple(before for before, _ in pads)
        ceil_mode = any(after > before for before, after in pads)
        return F.max_pool2d(x, self.kernel_size, self.stride, padding, ceil_mode=ceil_mode)


def max_pool(padding_rule):
    """The stem's 3×3/2 max pool under `padding_rule`."""
    return MaxPoolSame(3, 2) if padding_rule == "same" else nn.MaxPool2d(3, 2, padding=1)


class AvgPoolSame(nn.Module):
    """2×2/2 average pool, TF 'SAME', dividing by the count of valid pixels
    (docs/architecture.md §7.2); PyTorch's ceil-mode pool, timm's choice, is the same."""

    def forward(self, x):
        return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
