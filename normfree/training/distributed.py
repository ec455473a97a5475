"""Data-parallel training on PyTorch's own engine: torchrun starts the processes, DDP averages
the gradients (so AGC sees the global-batch gradient), and rank 0 alone logs and writes files.

`torchrun --nproc-per-node N -m normfree train ...` or `normfree train --nproc N` (which calls
torchrun's launcher). Multi-node: `torchrun --nnodes M --nproc-per-node N
--rdzv-backend c10d --rdzv-endpoint HOST:PORT -m normfree train ...` on every node.
"""

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

from ..runtime import default_device


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
        run(args)
    except SignalException as e:  # the launcher was signalled and has stopped its processes
        print(f"normfree: stopped by {e.sigval.name}", flush=True)
        return 128 + e.sigval
    except ChildFailedError as e:
        codes = {failure.exitcode for failure in e.failures.values()}
        if codes == {128 + signal.SIGTERM}:  # stopped by a signal, each after checkpointing
            return 128 + signal.SIGTERM
        print(f"normfree: a training process failed: {e}", flush=True)
        return 1
    return 0
