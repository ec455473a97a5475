"""Building blocks of normalizer-free networks.

Brock et al., "High-Performance Large-Scale Image Recognition Without Normalization" (ICML 2021)
and "Characterizing signal propagation to close the performance gap in unnormalized ResNets"
(ICLR 2021).

Differences from the reference implementation (DeepMind's JAX/Haiku `nfnets`):
- Tensors are NCHW and conv kernels OIHW (PyTorch layouts); the WS gain has shape (out_channels,).
- 'SAME' padding is resolved once per input size and cached; a copy (`F.pad`) is made only when
  TensorFlow's rule is asymmetric, which PyTorch's conv padding cannot express.
- In inference (no autograd), the standardised weight is cached until the weight or gain changes
  (in place, which bumps its version counter, or by any optimizer step; writes through `.data`
  are not seen: call `model.to(...)` or load a state dict instead); on CPU in fp32 it is also
  prepacked for mkldnn, and the activation after a conv runs inside it.
- The standardisation runs on PyTorch's batch-norm kernels with a hand-written backward
  (`standardize_weight`): same values and gradients as the formula up to float rounding.
- Inside blocks and stems, γ (and β) multiply the next conv's standardised weight (`input_gain`)
  instead of the activation map: the same function with one full-size multiply fewer per
  activation, equal to the reference up to float rounding.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

# γ = 1/std(f(z)) for z ~ N(0, 1): the reference's constants, verbatim (they are what the released
# weights were trained with and run 0.03-0.09 % above the exact integrals).
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

_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    """The reference's GELU (JAX's default): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    When compiled it is written as x·sigmoid(2·√(2/π)·(x + 0.044715·x³)), the same function up
    to float rounding (a few ulp): inductor's vectorised exp costs less than its tanh (F0
    inference compiled with freezing: 0.93× → 1.04× timm's, docs/benchmarks.md)."""
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


def gamma_of(name):
    """γ of an activation; timm's exact GELU uses the tanh GELU's constant, as timm does."""
    return GAMMA["gelu" if name == "gelu_exact" else name]


class Activation(nn.Module):
    """The plain activation f, by name; its γ is applied by the consumer (`input_gain`)."""

    def __init__(self, name):
        super().__init__()
        if name not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
        self.name = name
        self.fn = ACTIVATIONS[name]
        self.gamma = gamma_of(name)

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return self.name


class ScaledActivation(Activation):
    """`f(x) · γ_f`, which keeps unit variance for unit-variance Gaussian input (SPEC §2)."""

    def forward(self, x):
        return self.fn(x) * self.gamma

    def extra_repr(self):
        return f"{self.name}, gamma={self.gamma}"


def same_padding(size, kernel_size, stride, dilation=1):
    """TensorFlow 'SAME' padding of one spatial dim: (before, after), the extra pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


# Activations mkldnn can compute inside a conv (its "post-ops"): name → (post-op, algorithm).
_FUSED_ACTIVATIONS = {"relu": ("relu", ""), "gelu": ("gelu", "tanh"),
                      "gelu_exact": ("gelu", "none"), "silu": ("swish", "")}


def _prepacked_path_applies(x):
    """Eager fp32 CPU inference with mkldnn (what inductor's freezing does for compiled models);
    autocast, tracing (ONNX), compiling and other devices take the plain path."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # first: no graph breaks
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available() and not torch.is_autocast_enabled("cpu"))


class SamePaddingMixin:
    """Resolves TF 'SAME' padding per input size once, as conv padding or as an explicit pad."""

    def _padding_for(self, height, width):
        key = (int(height), int(width))  # ints also when traced (ONNX export: fixed size)
        cached = self._padding_cache.get(key)
        if cached is None:
            pad_h = same_padding(key[0], self.kernel_size[0], self.stride[0], self.dilation[0])
            pad_w = same_padding(key[1], self.kernel_size[1], self.stride[1], self.dilation[1])
            if pad_h[0] == pad_h[1] and pad_w[0] == pad_w[1]:
                cached = ((pad_h[0], pad_w[0]), None)  # symmetric: the conv pads, no copy
            else:
                cached = ((0, 0), (pad_w[0], pad_w[1], pad_h[0], pad_h[1]))
            self._padding_cache[key] = cached
        return cached

    def forward(self, x, activation=None):
        """conv(x), then `activation` (an `Activation`) if given, computed inside the conv where
        the prepacked CPU path applies (`WSConv2d`)."""
        padding, explicit_pad = self._padding_for(x.shape[-2], x.shape[-1])
        if explicit_pad is not None:
            x = F.pad(x, explicit_pad)
        packed = self._packed_weight(x, padding)
        if packed is not None:
            post_op, algorithm = "none", ""
            if type(activation) is Activation and activation.name in _FUSED_ACTIVATIONS:
                (post_op, algorithm), activation = _FUSED_ACTIVATIONS[activation.name], None
            x = torch.ops.mkldnn._convolution_pointwise(
                x, packed, self.bias, list(padding), list(self.stride), list(self.dilation),
                self.groups, post_op, [], algorithm)
        else:
            x = F.conv2d(x, self.conv_weight(), self.bias, self.stride, padding, self.dilation,
                         self.groups)
        return x if activation is None else activation(x)

    def _packed_weight(self, x, padding):
        return None


def standardize_weight(weight, gain, fan_in, eps_mode="clamp", input_gain=1.0):
    """Ŵ of Scaled WS (the formulas of `WSConv2d`), differentiable in `weight` and `gain`.

    Eager autograd runs the fused kernels below; without autograd, and under torch.compile
    (whose inductor fuses the formula itself, and whose freezing pass cannot take the custom
    function), the formula is written out."""
    needs_grad = torch.is_grad_enabled() and (weight.requires_grad or gain.requires_grad)
    if needs_grad and not torch.compiler.is_compiling():
        return _StandardizeWeight.apply(weight, gain, fan_in, eps_mode, input_gain)
    var, mean = torch.var_mean(weight, dim=tuple(range(1, weight.ndim)), keepdim=True,
                               correction=0)
    if eps_mode == "clamp":
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=_CLAMP))
    else:
        scale = torch.rsqrt((var + 1e-5) * fan_in)
    return (weight - mean) * (scale * gain.view(-1, *[1] * (weight.ndim - 1)) * input_gain)


# The per-filter statistics come from the batch-norm kernels (one fused pass forward, one
# backward) instead of var_mean and its autograd graph, which took ~3× as long on CPU (~20 % of
# an NFNet-F0 training step). For the reference's "clamp" rule the kernel runs with an eps below
# float32's resolution of any variance that is not clamped, so 1/sqrt(var + eps) = 1/sqrt(var).
_TINY_EPS = 1e-30
_CLAMP = 1e-4       # the reference's floor on N·var
_DELTA = 1e-10      # see backward


def _only_channels_last(t):
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
        memory_format=torch.channels_last)


def _rows(t, like):
    """(1, out_channels, fan_in) view of a conv weight (or its gradient, in the weight's element
    order `like`), without a copy when contiguous or channels_last: per-filter statistics do
    not depend on the order of a filter's elements."""
    if _only_channels_last(like):
        t = t.permute(0, 2, 3, 1)
    return t.reshape(1, t.shape[0], -1)


def _unrows(rows, like):
    """The inverse of `_rows(·, like)`: a tensor shaped and laid out like `like`."""
    if _only_channels_last(like):
        o, i, h, w = like.shape
        return rows.view(o, h, w, i).permute(0, 3, 1, 2)
    return rows.view(like.shape)


class _StandardizeWeight(torch.autograd.Function):
    """Ŵ = x̂ · f per filter o, with x̂ = (W − mean) · invstd the batch-norm output and
    f = g · input_gain · m: m = 1/sqrt(N), or for a "clamp" filter with N·var < 1e-4,
    m = 1/(sqrt(1e-4) · invstd), which makes Ŵ = (W − mean) · g · input_gain / sqrt(1e-4)."""

    @staticmethod
    def forward(ctx, weight, gain, fan_in, eps_mode, input_gain):
        eps = _TINY_EPS if eps_mode == "clamp" else 1e-5
        rows = _rows(weight, weight)
        normalised, mean, invstd = torch.native_batch_norm(rows, None, None, None, None, True,
                                                           0.0, eps)
        multiplier = torch.full_like(invstd, fan_in ** -0.5)
        clamped = torch.zeros_like(invstd, dtype=torch.bool)
        if eps_mode == "clamp":
            clamped = invstd * invstd > fan_in / _CLAMP
            multiplier = torch.where(clamped, _CLAMP ** -0.5 / invstd, multiplier)
        factor = multiplier * gain * input_gain
        ctx.save_for_backward(weight, gain, mean, invstd, multiplier, clamped)
        ctx.eps, ctx.input_gain = eps, input_gain
        return _unrows(normalised * factor.view(1, -1, 1), weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, gain, mean, invstd, multiplier, clamped = ctx.saved_tensors
        factor = multiplier * gain * ctx.input_gain
        # The kernel's input gradient, f · invstd · (G − mean(G) − x̂ · mean(G · x̂)), includes
        # the path through the variance, which a clamped filter does not have. There, invstd
        # scaled by δ and f by 1/δ keep f · invstd and shrink that term by δ² (below rounding).
        invstd_used = torch.where(clamped, invstd * _DELTA, invstd)
        factor_used = torch.where(clamped, factor / _DELTA, factor)
        grad_rows, grad_factor, _ = torch.ops.aten.native_batch_norm_backward(
            _rows(grad, weight), _rows(weight, weight), factor_used, None, None, mean,
            invstd_used, True, ctx.eps, [True, ctx.needs_input_grad[1], False])
        grad_weight = _unrows(grad_rows, weight) if ctx.needs_input_grad[0] else None
        grad_gain = None
        if ctx.needs_input_grad[1]:  # dL/dg = Σ G · x̂ · m · input_gain
            grad_factor = torch.where(clamped, grad_factor / _DELTA, grad_factor)
            grad_gain = grad_factor * multiplier * ctx.input_gain
        return grad_weight, grad_gain, None, None, None


class _OptimizerSteps:
    """Optimizer steps taken in this process. In-place changes bump a tensor's version counter,
    but fused optimizers (`fused=True`) update parameters without doing so: the inference cache
    of Ŵ also expires with every step of any optimizer."""

    count = 0

    @classmethod
    def after_step(cls, optimizer, args, kwargs):
        cls.count += 1


register_optimizer_step_post_hook(_OptimizerSteps.after_step)


class WSConv2d(SamePaddingMixin, nn.Conv2d):
    """Conv with Scaled Weight Standardization (SPEC §3) and TF 'SAME' padding.

    Ŵ_o = g_o · (W_o − mean(W_o)) / sqrt(max(N · var(W_o), 1e-4))   (eps_mode "clamp", reference)
    Ŵ_o = g_o · (W_o − mean(W_o)) / sqrt(N · (var(W_o) + 1e-5))      (eps_mode "add", timm)
    with N the fan-in (in_channels/groups · kH · kW) and var the population variance.
    `input_gain` (a constant, e.g. γ·β of the activation feeding this conv) multiplies Ŵ.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1,
                 eps_mode="clamp", input_gain=1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups,
                         bias=True)
        if eps_mode not in ("clamp", "add"):
            raise ValueError(f"eps_mode must be 'clamp' or 'add', got {eps_mode!r}")
        self.eps_mode = eps_mode
        self.input_gain = input_gain
        self.gain = nn.Parameter(torch.ones(out_channels))
        self.fan_in = self.weight[0].numel()
        self._padding_cache = {}
        self._cached_weight = None
        self._cache_key = None
        self._packed = {}  # input shape → prepacked Ŵ
        nn.init.normal_(self.weight, 0.0, self.fan_in ** -0.5)
        nn.init.zeros_(self.bias)

    def standardized_weight(self):
        return standardize_weight(self.weight, self.gain, self.fan_in, self.eps_mode,
                                  self.input_gain)

    def conv_weight(self):
        if torch.compiler.is_compiling():  # traced as a formula (freezing folds it)
            return self.standardized_weight()
        if torch.is_grad_enabled() and (self.weight.requires_grad or self.gain.requires_grad):
            self._cached_weight = None
            return self.standardized_weight()
        # Inference: Ŵ is a constant until an optimizer (or a load) changes W or g.
        weight, gain = self.weight, self.gain
        key = (weight, gain, weight._version, gain._version, _OptimizerSteps.count)
        cached = self._cache_key
        if (cached is None or cached[0] is not weight or cached[1] is not gain
                or cached[2:] != key[2:]):
            with torch.no_grad():
                self._cached_weight = self.standardized_weight()
            self._packed = {}
            self._cache_key = key
        return self._cached_weight

    def _packed_weight(self, x, padding):
        """Ŵ reordered once into mkldnn's blocked layout (CPU fp32 inference), per input shape:
        timm's convs reorder the weight on every call. None where this path does not apply."""
        if not _prepacked_path_applies(x):
            return None
        weight = self.conv_weight()
        key = tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= 8:  # e.g. many image sizes in `predict`: keep memory bounded
                self._packed.clear()
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, list(padding), list(self.stride), list(self.dilation), self.groups,
                list(key))
            self._packed[key] = packed
        return packed

    def _apply(self, fn, *args, **kwargs):
        self._cached_weight, self._cache_key, self._packed = None, None, {}  # moves invalidate Ŵ
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state, _cached_weight=None, _cache_key=None, _packed={})
        return state


class SameConv2d(SamePaddingMixin, nn.Conv2d):
    """A plain conv with TF 'SAME' padding (BN twins, unstandardised NF convs), `input_gain`
    as in `WSConv2d`."""

    def __init__(self, *args, input_gain=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_gain = input_gain
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


class AvgPoolSame(nn.Module):
    """2×2/2 average pool, TF 'SAME', dividing by the count of valid pixels (SPEC §7.2)."""

    def forward(self, x):
        return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


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


class StochasticDepth(nn.Module):
    """Drops the residual branch per example with probability `rate` (training only).

    The reference does not rescale kept examples; timm divides them by 1 − rate (`rescale=True`).
    """

    def __init__(self, rate, rescale=False):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
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
