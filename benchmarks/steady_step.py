"""Does a compiled train step slow down or speed up over a run's first hundreds of steps? Times
the `fmnist` preset's step (nfnet_s0_dense, bf16 autocast, channels_last, AGC λ 0.04, batch 128)
on one fixed random batch, per block of steps, so that a drift of the process itself can be
told from a machine whose speed changes (the time budget plans from steps timed early on).

Run: python benchmarks/steady_step.py [--threads 2] [--blocks 8] [--block-steps 100]"""
import argparse
import time
from dataclasses import replace

import torch

from normfree.analysis.bench import make_train_step
from normfree.nn.network import NFNet
from normfree.nn.variants import VARIANTS

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--blocks", type=int, default=8)
parser.add_argument("--block-steps", type=int, default=100)
args = parser.parse_args()
torch.set_num_threads(args.threads)

torch.manual_seed(0)
config = replace(VARIANTS["nfnet_s0_dense"], dropout=0.0, stochastic_depth=0.0)  # as trained
model = NFNet(config, 10).to(memory_format=torch.channels_last)
images = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (128,))
step, _ = make_train_step(model, images, labels, 0.04, precision="bf16",
                          forward=torch.compile(model))
start = time.perf_counter()
step()
print(f"first step (compiling): {time.perf_counter() - start:.1f} s", flush=True)
for block in range(args.blocks):
    start = time.perf_counter()
    for _ in range(args.block_steps):
        step()
    ms = 1000 * (time.perf_counter() - start) / args.block_steps
    first = block * args.block_steps + 2
    print(f"steps {first}-{first + args.block_steps - 1}: {ms:.1f} ms a step", flush=True)
