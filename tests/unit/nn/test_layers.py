import copy
import math

import pytest
import torch
import torch.nn.functional as F

from normfree.errors import ConfigError
from normfree.nn.activations import ACTIVATIONS, ScaledActivation, gelu_tanh
from normfree.nn.gamma import ACTIVATION_NAMES, GAMMA
from normfree.nn.layers import SqueezeExcite, StochasticDepth
from normfree.nn.padding import AvgPoolSame, MaxPoolSame, same_padding
from normfree.nn.ws_conv import WSConv2d, standardize_weight


def gaussian_std(fn):
    """std of fn(z), z ~ N(0, 1), by the trapezoid rule in float64."""
    z = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    pdf = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    f = fn(z)
    mean = torch.trapezoid(f * pdf, z)
    return torch.sqrt(torch.trapezoid((f - mean) ** 2 * pdf, z)).item()


@pytest.mark.parametrize("name", sorted(GAMMA))
def test_gamma_matches_numerical_integral(name):
    exact = 1.0 / gaussian_std(ACTIVATIONS[name]) if name != "identity" else 1.0
    assert GAMMA[name] == pytest.approx(exact, rel=2e-3)


def test_gamma_constants_are_the_reference_values():
    assert GAMMA["relu"] == 1.7139588594436646
    assert GAMMA["gelu"] == 1.7015043497085571
    assert GAMMA["silu"] == 1.7881293296813965


def test_reference_gelu_is_tanh_approximation():
    x = torch.linspace(-4, 4, 101)
    act = ScaledActivation("gelu")
    assert torch.equal(act(x), F.gelu(x, approximate="tanh") * GAMMA["gelu"])
    assert not torch.equal(act(x), F.gelu(x) * GAMMA["gelu"])
    exact = ScaledActivation("gelu_exact")
    assert exact.gamma == GAMMA["gelu"]
    assert torch.equal(exact(x), F.gelu(x) * GAMMA["gelu"])


def test_unknown_activation_is_named():
    with pytest.raises(ConfigError, match="swishy"):
        ScaledActivation("swishy")


def test_scaled_activation_keeps_unit_variance():
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    for name in ("relu", "gelu", "silu"):
        assert ScaledActivation(name)(z).std().item() == pytest.approx(1.0, abs=5e-3)


@pytest.mark.parametrize("groups,kernel", [(1, 3), (4, 3), (1, 1)])
def test_ws_weight_has_zero_mean_and_variance_one_over_fan_in(groups, kernel):
    torch.manual_seed(0)
    conv = WSConv2d(16, 8, kernel, groups=groups)
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(0.7)  # standardisation must undo any scale and shift
    w = conv.standardized_weight().double()
    fan_in = 16 // groups * kernel * kernel
    assert conv.fan_in == fan_in
    assert w.mean(dim=(1, 2, 3)).abs().max().item() < 1e-7
    var = w.var(dim=(1, 2, 3), correction=0)
    assert torch.allclose(var, torch.full_like(var, 1.0 / fan_in), rtol=1e-5)


def test_ws_eps_rules():
    """Reference: 1/sqrt(max(N·var, 1e-4)); timm: 1/sqrt(N·(var + 1e-5))."""
    conv = WSConv2d(2, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-0.001, 0.001]).view(1, 2, 1, 1))  # N·var < 1e-4
    w = conv.weight.detach().flatten().double()
    centred = w - w.mean()
    var = centred.pow(2).mean()
    expected_clamp = centred / math.sqrt(max(2 * var.item(), 1e-4))
    assert torch.allclose(conv.standardized_weight().flatten().double(), expected_clamp,
                          rtol=1e-5)
    conv.eps_mode = "add"
    expected_add = centred / math.sqrt(2 * (var.item() + 1e-5))
    assert torch.allclose(conv.standardized_weight().flatten().double(), expected_add,
                          rtol=1e-5)


def _reference_standardisation(w, gain, fan_in, eps_mode, input_gain):
    """docs/architecture.md §3 written out with autograd ops, the reference for the fused
    kernel's gradients."""
    var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
    scale = (torch.rsqrt(torch.clamp(var * fan_in, min=1e-4)) if eps_mode == "clamp"
             else torch.rsqrt((var + 1e-5) * fan_in))
    return (w - mean) * scale * gain.view(-1, 1, 1, 1) * input_gain


@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fused_ws_matches_the_formula_and_its_gradients(eps_mode, memory_format):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    w[2] = 0.3 + 1e-4 * torch.randn(4, 3, 3, generator=g, dtype=torch.float64)  # N·var < 1e-4
    w[3] = 0.5  # a constant filter: zero variance
    gain = torch.randn(6, generator=g, dtype=torch.float64)
    upstream = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    results = []
    for fn in (_reference_standardisation, standardize_weight):
        weight = w.clone().contiguous(memory_format=memory_format).requires_grad_()
        g_ = gain.clone().requires_grad_()
        out = fn(weight, g_, 36, eps_mode, 1.7)
        (out * upstream).sum().backward()
        assert out.is_contiguous(memory_format=memory_format)
        results.append((out.detach(), weight.grad, g_.grad))
    for expected, actual in zip(*results):
        assert torch.allclose(actual, expected, rtol=1e-10, atol=1e-12)
    if eps_mode == "clamp":  # the clamped filter's gradient has no path through its variance
        assert torch.allclose(results[1][1][2], 1.7 * gain[2] * 100 * (
            upstream[2] - upstream[2].mean()), rtol=1e-10)


def test_ws_inference_cache_follows_weight_changes():
    torch.manual_seed(0)
    conv = WSConv2d(4, 4, 3)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        first = conv(x)
        assert torch.equal(conv(x), first)
        conv.weight.mul_(-1.0)  # an optimizer-like in-place update
        flipped = conv(x)
    assert torch.allclose(flipped - conv.bias.view(1, -1, 1, 1),
                          -(first - conv.bias.view(1, -1, 1, 1)), atol=1e-6)
    # with autograd on, the weight is standardised in the graph and gradients flow
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.gain.grad is not None


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("sequence", ["step", "step, zero_grad", "infer, step, zero_grad",
                                      "unfreeze, step, zero_grad", "copy, step, zero_grad"])
def test_ws_inference_cache_expires_with_fused_optimizer_steps(optimizer, sequence):
    """Fused optimizers write parameters without bumping their version counters; whatever runs
    between the cached inference and the next one, the next one sees the new weights."""
    torch.manual_seed(0)
    conv = WSConv2d(4, 8, 3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 8, 8)
    if "unfreeze" in sequence:  # cached while frozen (no gradients possible), then trained
        conv.requires_grad_(False)
    with torch.no_grad():
        before = conv(x)
    assert conv._cached_weight is not None
    conv.requires_grad_(True)
    if "copy" in sequence:  # a deep copy (e.g. an EMA model) keeps its own cache
        conv = copy.deepcopy(conv)
    make = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    opt = make(conv.parameters(), lr=0.5, fused=True)
    conv(x).square().sum().backward()
    if "infer" in sequence:  # between backward and step: must not cache the old weights
        with torch.no_grad():
            assert torch.allclose(conv(x), before)
    opt.step()
    if "zero_grad" in sequence:
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = conv(x)
        expected = F.conv2d(x, conv.standardized_weight(), conv.bias, padding=1)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, expected, atol=1e-5)


def test_ws_inference_cache_is_reused_while_nothing_changes():
    conv = WSConv2d(4, 8, 3).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        conv(x)
        cached = conv._cached_weight
        conv(x)
    assert conv._cached_weight is cached  # no second standardisation


@pytest.mark.parametrize("size", [7, 8, 15, 16])
@pytest.mark.parametrize("kernel,stride", [(3, 2), (3, 1), (1, 2), (7, 2)])
def test_same_padding_conv_matches_explicit_pad(size, kernel, stride):
    torch.manual_seed(0)
    conv = WSConv2d(3, 4, kernel, stride)
    x = torch.randn(2, 3, size, size + 1)
    ph, pw = same_padding(size, kernel, stride), same_padding(size + 1, kernel, stride)
    expected = F.conv2d(F.pad(x, (pw[0], pw[1], ph[0], ph[1])), conv.standardized_weight(),
                        conv.bias, stride)
    out = conv(x)
    assert out.shape[-2:] == (math.ceil(size / stride), math.ceil((size + 1) / stride))
    assert torch.allclose(out, expected, atol=1e-5)


def test_same_padding_offsets():
    assert same_padding(8, 3, 2) == (0, 1)  # even input: nothing before, one after
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(8, 1, 2) == (0, 0)


def test_symmetric_padding_uses_conv_padding_not_a_copy():
    conv = WSConv2d(3, 4, 3, 2)
    conv(torch.randn(1, 3, 9, 9))
    conv(torch.randn(1, 3, 8, 8))
    assert conv._padding_cache[(9, 9)] == ((1, 1), None)
    assert conv._padding_cache[(8, 8)] == ((0, 0), (0, 1, 0, 1))


@pytest.mark.parametrize("size", [7, 8, 112, 113])
def test_max_pool_same_matches_minus_inf_padding(size):
    x = torch.randn(2, 3, size, size)
    ph = same_padding(size, 3, 2)
    expected = F.max_pool2d(F.pad(x, (ph[0], ph[1], ph[0], ph[1]), value=-math.inf), 3, 2)
    assert torch.equal(MaxPoolSame()(x), expected)


def test_avg_pool_divides_by_valid_count():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    out = AvgPoolSame()(x)
    # windows: [[0,1,3,4]], [[2,5]], [[6,7]], [[8]]
    assert out.flatten().tolist() == [2.0, 3.5, 6.5, 8.0]


def test_squeeze_excite_is_two_times_sigmoid_gate_with_plain_relu():
    torch.manual_seed(0)
    se = SqueezeExcite(6, 3)
    x = torch.randn(2, 6, 4, 4)
    s = x.mean(dim=(2, 3))
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(s))))
    assert torch.allclose(se(x), x * 2 * gate[:, :, None, None], atol=1e-6)
    assert se.fc1.weight.abs().max().item() <= 2 * 6 ** -0.5 + 1e-6  # truncated at ±2σ
    assert torch.all(se.fc1.bias == 0)


def test_stochastic_depth_reference_and_timm():
    torch.manual_seed(0)
    x = torch.ones(20000, 1, 1, 1)
    ref = StochasticDepth(0.25)
    kept = ref(x)
    assert set(kept.unique().tolist()) == {0.0, 1.0}  # no rescaling
    assert kept.mean().item() == pytest.approx(0.75, abs=0.01)
    timm_like = StochasticDepth(0.25, rescale=True)
    values = timm_like(x).unique().tolist()
    assert values == [0.0, pytest.approx(1 / 0.75)]
    ref.eval()
    assert torch.equal(ref(x), x)
    with pytest.raises(ConfigError, match=r"stochastic depth rate must be in \[0, 1\)"):
        StochasticDepth(1.0)


def test_compiled_gelu_is_the_tanh_gelu_written_with_a_sigmoid():
    x = torch.linspace(-12.0, 12.0, 4001, dtype=torch.float64)
    expected = F.gelu(x, approximate="tanh")
    assert torch.equal(gelu_tanh(x), expected)  # eager: PyTorch's kernel
    compiled = torch.compile(gelu_tanh, backend="eager", fullgraph=True)(x)
    assert torch.allclose(compiled, expected, rtol=1e-12, atol=1e-12)
    assert not torch.equal(compiled, expected)  # the other formula ran (float64 rounding)


def test_every_activation_name_a_config_accepts_has_a_function():
    """nn/gamma.py lists the names without importing torch; they must be ACTIVATIONS' keys."""
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)
