"""Which precision the hardware really has: bf16 only where it runs natively (not by emulation
on pre-Ampere GPUs), fp16 with loss scaling on every GPU, and clear refusals otherwise."""

import contextlib
import warnings

import pytest
import torch

from normfree import runtime
from normfree.errors import ConfigError

GPU = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device of a chosen compute capability, without a GPU."""
    def with_capability(capability, name):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        # what torch answers by default on a T4/V100: emulation counts as support
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        return GPU
    return with_capability


@pytest.mark.parametrize("capability,name,expected", [
    ((7, 0), "Tesla V100", "fp16"), ((7, 5), "Tesla T4", "fp16"),
    ((8, 0), "A100", "bf16"), ((9, 0), "H100", "bf16")])
def test_gpu_precision_follows_native_bf16(gpu, capability, name, expected):
    device = gpu(capability, name)
    assert runtime.bf16_available(device) == (expected == "bf16")
    assert runtime.default_precision(device) == expected
    assert runtime.check_precision("fp16", device) == "fp16"


def test_bf16_on_a_pre_ampere_gpu_is_refused_naming_it(gpu):
    device = gpu((7, 0), "Tesla V100")
    with pytest.raises(ConfigError, match=r"--precision bf16: Tesla V100 \(compute capability "
                                          r"7.0\) has no native bf16 \(use --precision fp16\)"):
        runtime.check_precision("bf16", device)


@pytest.mark.parametrize("flags,expected", [({"avx2"}, "fp32"), ({"avx512_bf16"}, "bf16"),
                                            ({"amx_bf16", "avx2"}, "bf16")])
def test_cpu_precision_follows_its_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    assert runtime.default_precision(torch.device("cpu")) == expected


def test_bf16_on_a_cpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    with pytest.raises(ConfigError, match="this CPU has no native bf16 .use --precision fp32"):
        runtime.check_precision("bf16", torch.device("cpu"))


def test_fp16_on_the_cpu_follows_what_this_torch_supports():
    """torch ≥ 2.3 has CPU fp16 autocast and a CPU GradScaler: normfree says so and runs it."""
    assert runtime.fp16_available(torch.device("cpu"))
    assert runtime.check_precision("fp16", torch.device("cpu")) == "fp16"


def test_fp16_where_autocast_lacks_it_is_refused(monkeypatch):
    """An older torch warns and disables CPU autocast for float16."""
    def refusing_autocast(device_type, dtype, enabled=True):
        warnings.warn("In CPU autocast, but the target dtype is not supported. "
                      "Disabling autocast.", stacklevel=2)
        return contextlib.nullcontext()
    monkeypatch.setattr(torch, "autocast", refusing_autocast)
    with pytest.raises(ConfigError, match="--precision fp16: torch .* has no fp16 autocast"):
        runtime.check_precision("fp16", torch.device("cpu"))
