"""The Scaled-WS conv (docs/architecture.md §3) and its fast paths.

Differences from the reference implementation (DeepMind's JAX/Haiku `nfnets`):
- Tensors are NCHW and conv kernels OIHW (PyTorch layouts); the WS gain has shape (out_channels,).
- The standardisation runs on PyTorch's batch-norm kernels with a hand-written backward
  (`standardize_weight`): same values and gradients as the formula up to float rounding.
- In inference (no autograd), Ŵ is cached until the weight or gain may have changed: a new
  tensor, an in-place change (its version counter), or a gradient accumulated into either (a
  hook counts them; fused optimizers update parameters without bumping versions, but never
  without a gradient); while a gradient is present an optimizer step may come, so nothing is
  cached. Writes through `.data` are not seen: call `model.to(...)` or load a state dict
  instead. On CPU in fp32 the cached Ŵ is also prepacked for mkldnn, and the activation after
  the conv runs inside it.
- γ (and β) of the activation feeding the conv multiply Ŵ (`input_gain`) instead of the
  activation map: the same function with one full-size multiply fewer, equal to the reference
  up to float rounding.
"""

import weakref

import torch
from torch import nn

from ..errors import ConfigError
from .activations import Activation
from .padding import SamePaddingMixin

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
# backward) instead of var_mean and its autograd graph, which is several times slower on CPU
# (docs/benchmarks.md). For the reference's "clamp" rule the kernel runs with an eps below
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


class WSConv2d(SamePaddingMixin, nn.Conv2d):
    """Conv with Scaled Weight Standardization and TF 'SAME' (or symmetric) padding.

    Ŵ_o = g_o · (W_o − mean(W_o)) / sqrt(max(N · var(W_o), 1e-4))   (eps_mode "clamp", reference)
    Ŵ_o = g_o · (W_o − mean(W_o)) / sqrt(N · (var(W_o) + 1e-5))      (eps_mode "add", timm)
    with N the fan-in (in_channels/groups · kH · kW) and var the population variance.
    `input_gain` (a constant, e.g. γ·β of the activation feeding this conv) multiplies Ŵ.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1,
                 eps_mode="clamp", input_gain=1.0, padding_rule="same"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups,
                         bias=True)
        if eps_mode not in ("clamp", "add"):
            raise ConfigError(f"eps_mode must be 'clamp' or 'add', got {eps_mode!r}")
        self.eps_mode = eps_mode
        self.input_gain, self.padding_rule = input_gain, padding_rule
        self.gain = nn.Parameter(torch.ones(out_channels))
        self.fan_in = self.weight[0].numel()
        self._padding_cache = {}
        self._forget_cache()
        nn.init.normal_(self.weight, 0.0, self.fan_in ** -0.5)
        nn.init.zeros_(self.bias)

    def standardized_weight(self):
        return standardize_weight(self.weight, self.gain, self.fan_in, self.eps_mode,
                                  self.input_gain)

    def conv_weight(self):
        cached = self._cached_standardized_weight()
        return self.standardized_weight() if cached is None else cached

    def _cached_standardized_weight(self):
        """Ŵ from the inference cache (built if needed), or None where caching is not safe:
        under autograd or compiling (traced as a formula; freezing folds it), or while a
        gradient is present (an optimizer step may change W or g at any time)."""
        weight, gain = self.weight, self.gain
        if (torch.compiler.is_compiling() or torch.is_grad_enabled()
                and (weight.requires_grad or gain.requires_grad)
                or weight.grad is not None or gain.grad is not None):
            return None
        self._watch_gradients()
        # a tensor that starts taking gradients gets its hook when the key changes with it
        key = (weight._version, gain._version, weight.requires_grad, gain.requires_grad,
               self._gradients_seen)
        cached = self._cache_key
        if cached is None or cached[0] is not weight or cached[1] is not gain or cached[2:] != key:
            with torch.no_grad():
                self._cached_weight = self.standardized_weight()
            self._packed = {}
            self._cache_key = (weight, gain) + key
        return self._cached_weight

    def _watch_gradients(self):
        """Count the gradients accumulated into W and g (one hook per tensor that can take
        them): every optimizer update, fused or not, follows one."""
        me = weakref.ref(self)

        def count(_):
            module = me()
            if module is not None:
                module._gradients_seen += 1
        for index, param in enumerate((self.weight, self.gain)):
            if param.requires_grad and self._hooked[index] is not param:
                param.register_post_accumulate_grad_hook(count)
                self._hooked[index] = param

    def _convolve(self, x, padding, activation):
        packed = self._packed_weight(x, padding)
        if packed is None:
            return super()._convolve(x, padding, activation)
        post_op, algorithm = "none", ""
        if type(activation) is Activation and activation.name in _FUSED_ACTIVATIONS:
            (post_op, algorithm), activation = _FUSED_ACTIVATIONS[activation.name], None
        x = torch.ops.mkldnn._convolution_pointwise(
            x, packed, self.bias, list(padding), list(self.stride), list(self.dilation),
            self.groups, post_op, [], algorithm)
        return x, activation

    def _packed_weight(self, x, padding):
        """Ŵ reordered once into mkldnn's blocked layout (CPU fp32 inference), per input shape:
        a plain conv reorders the weight on every call. None where this path does not apply."""
        if not _prepacked_path_applies(x):
            return None
        weight = self._cached_standardized_weight()
        if weight is None:
            return None
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

    def _forget_cache(self):
        self._cached_weight, self._cache_key, self._packed = None, None, {}
        self._hooked, self._gradients_seen = [None, None], 0

    def _apply(self, fn, *args, **kwargs):
        self._forget_cache()  # moves and casts may make new tensors
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):  # copies and pickles start without a cache (nor hooks: see above)
        state = dict(super().__getstate__())
        state.update(_cached_weight=None, _cache_key=None, _packed={}, _hooked=[None, None],
                     _gradients_seen=0)
        return state
