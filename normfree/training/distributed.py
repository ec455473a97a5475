"""Data-parallel training on PyTorch's own engine: torchrun starts the processes, DDP averages
the gradients (so AGC sees the global-batch gradient), and rank 0 alone logs and writes files.

`torchrun --nproc-per-node N -m normfree train ...` or `normfree train --nproc N` (which calls
torchrun's launcher). Multi-node: `torchrun --nnodes M --nproc-per-node N
--rdzv-backend c10d --rdzv-endpoint HOST:PORT -m normfree train ...` on every node.
"""

import ctypes
import logging
import os
import re
import signal
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous
from torch.nn.parallel import DistributedDataParallel

from ..errors import PeerLost
from ..runtime import default_device

LAUNCHER_ENV = "NORMFREE_LAUNCHER_PID"  # `launch` names itself to the processes it starts
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def start(device_name=None):
    """(Processes, device) for this process; joins the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    procs = Processes(int(os.environ.get("RANK", "0")), world_size,
                      int(os.environ.get("LOCAL_RANK", "0")))
    device = default_device(device_name)
    if device.type == "cuda" and procs.distributed:  # one GPU per local process
        device = torch.device("cuda", procs.local_rank)
    if procs.distributed and not dist.is_initialized():
        die_with_launcher()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store, _, _ = next(rendezvous("env://"))
        # torchrun's agent keeps its store across restarts: without a per-attempt prefix the
        # restarted processes read their predecessors' addresses and cannot connect
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                store=dist.PrefixStore(f"normfree/attempt_{attempt}", store),
                                rank=procs.rank, world_size=procs.world_size)
    return procs, device


def die_with_launcher():
    """Under torchrun, get SIGTERM (checkpoint and stop, as for any SIGTERM) when the process
    that started this one dies, however it dies: a kill -9 of the launcher must not leave
    its processes training (Linux's parent-death signal)."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher and os.getppid() != int(launcher):  # it died before the signal was set
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def peer_failures_in_one_line(procs):
    """Within the block, a collective that fails because another process died (its backend
    raises a long `RuntimeError`) becomes `PeerLost`: one line naming this rank."""
    try:
        yield
    except RuntimeError as e:
        text = str(e).strip()
        # gloo raises plain RuntimeErrors ("[.../gloo/.../pair.cc:545] Read error ...")
        if not procs.distributed or not (isinstance(e, dist.DistError) or "gloo" in text
                                         or "NCCL" in text):
            raise
        reason = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]).split(". ")[0][:160]
        raise PeerLost(f"rank {procs.rank}: another training process stopped, so this one "
                       f"stops too ({reason})") from None


def ddp(model):
    """`DistributedDataParallel(model)`. Its buckets are laid out contiguously, so channels_last
    gradients are copied out of them, with a warning per process; the copy keeps gradients laid
    out like their parameters, which the fused optimizer kernels need, so it is not a problem
    to report (the filter holds for the run alone: `runtime.settings_kept`)."""
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model)


def stop(procs):
    if procs.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sum_across(procs, values, device):
    """Element-wise sum of a list of floats over all processes (the list itself when alone)."""
    if not procs.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def max_across(procs, value, device):
    """The largest of a number over all processes (the number itself when alone)."""
    if not procs.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def gather(procs, value):
    """[value of rank 0, rank 1, ...] on every process."""
    if not procs.distributed:
        return [value]
    values = [None] * procs.world_size
    dist.all_gather_object(values, value)
    return values


def launch(nproc, argv):
    """Run `normfree <argv>` in `nproc` local processes with torchrun; returns its exit code."""
    # slow to import: only here
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "normfree", *argv])
    try:
        with launcher_named():
            run(args)
    except SignalException as e:  # the launcher was signalled and has stopped its processes
        log.warning(f"normfree: stopped by {e.sigval.name}")
        return 128 + e.sigval
    except ChildFailedError as e:
        codes = {failure.exitcode for failure in e.failures.values()}
        if codes == {128 + signal.SIGTERM}:  # stopped by a signal, each after checkpointing
            return 128 + signal.SIGTERM
        for rank, failure in sorted(e.failures.items()):  # one line each, not torch's table
            log.error(f"normfree: training process {rank} failed (exit code "
                      f"{failure.exitcode})")
        return 1
    return 0


@contextmanager
def launcher_named():
    """`LAUNCHER_ENV` set to this process while torchrun starts processes (it copies the
    environment into theirs)."""
    previous = os.environ.get(LAUNCHER_ENV)
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    try:
        yield
    finally:
        if previous is None:
            del os.environ[LAUNCHER_ENV]
        else:
            os.environ[LAUNCHER_ENV] = previous
