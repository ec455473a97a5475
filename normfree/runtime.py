"""What the process runs on: the device, its thread count, loggers and warnings filters for a
stretch of work (set there, then as they were), which precisions it runs natively (and their
autocast), and a description of the machine for results files."""

import logging
import os
import platform
import subprocess
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from .errors import ConfigError


def default_device(name=None):
    """`name` as a device ("cpu", "cuda", "cuda:1", ...), or CUDA when available, else the CPU.

    A device this machine does not have is refused naming it, before any work starts.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N"
                          ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: this machine has no CUDA GPU usable by torch "
                              f"{torch.__version__}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here")
    elif device.type != "cpu":
        raise ConfigError(f"--device {name}: normfree runs on cpu or cuda, not {device.type}")
    return device


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def num_threads(count):
    """Within the block torch uses `count` intra-op threads (None or 0: those it has); after
    it, as many as before, so a library call leaves the caller's setting alone."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def logger_level(name, level):
    """Within the block the logger `name` lets through only records of `level` and above; after
    it, what it let through before, so a library call leaves the caller's logging alone."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def settings_kept(threads=None, quiet_loggers=()):
    """Within the block torch uses `threads` intra-op threads (None or 0: those it has) and the
    loggers `quiet_loggers` pass errors only; after it, those and the warnings filters are as
    they were, however the block ends: a library call leaves its caller's process alone."""
    with warnings.catch_warnings(), num_threads(threads), ExitStack() as loggers:
        for name in quiet_loggers:
            loggers.enter_context(logger_level(name, logging.ERROR))
        yield


def bf16_available(device):
    """Whether bf16 runs natively: CUDA GPUs from compute capability 8.0 (Ampere) on, CPUs with
    AVX512-BF16 or AMX. Before Ampere, `torch.cuda.is_bf16_supported()` answers True by
    emulation, but cuDNN has no bf16 convolutions there (pytorch PR #148322)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_flags():
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fp16_available(device):
    """Whether fp16 autocast and a loss-scaling `GradScaler` run on `device`: every CUDA GPU;
    the CPU where this torch's autocast takes float16 and its GradScaler the CPU."""
    if device.type == "cuda":
        return True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast(device.type, torch.float16):
            pass
    if caught:  # "... the target dtype is not supported. Disabling autocast."
        return False
    try:
        torch.amp.GradScaler(device.type)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def default_precision(device):
    """bf16 where the hardware has it natively, else fp16 on CUDA GPUs, else fp32."""
    if bf16_available(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def check_precision(name, device):
    """`name` if `device` runs it; a `ConfigError` saying what to use instead if not."""
    if name == "bf16" and not bf16_available(device):
        raise ConfigError(f"--precision bf16: {describe_device(device)} has no native bf16 "
                          f"(use --precision {default_precision(device)})")
    if name == "fp16" and not fp16_available(device):
        raise ConfigError(f"--precision fp16: torch {torch.__version__} has no fp16 autocast "
                          f"with a GradScaler on {describe_device(device)} (use --precision "
                          f"{default_precision(device)})")
    return name


def autocast(device, precision):
    """The autocast context of a precision (disabled for fp32)."""
    dtype = _AUTOCAST_DTYPES.get(precision, torch.bfloat16)
    return torch.autocast(device.type, dtype, enabled=precision in _AUTOCAST_DTYPES)


def loss_scaler(device, precision):
    """fp16's `GradScaler` (the loss scaled so that small gradients survive fp16), or None for
    the precisions that need none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def describe_device(device):
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    return "this CPU"


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "commit": git_commit()}


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def available_memory(device):
    """Bytes a new allocation on `device` can get: the GPU's free memory, or the system's
    MemAvailable (None when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def refuse_unaffordable(needed, device, what):
    """`ConfigError` when `needed` bytes (a lower bound) exceed what `device` has free: `what`
    names the flags that set the size, for the user to change, before anything allocates."""
    free = available_memory(device)
    if free is not None and needed > free:
        raise ConfigError(f"{what} needs at least {needed / 2**30:.1f} GiB on {device.type}, "
                          f"which has {free / 2**30:.1f} GiB free: use smaller values")
