"""What the process runs on: the device, whether bf16 pays off, and a description of the
machine for results files."""

import os
import platform
import subprocess
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


def bf16_available(device):
    """bf16 autocast pays off on CUDA GPUs that have it and on CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
