"""Where a training step spends its time, grouped by operator: training's own `train_step`
(bf16 autocast, channels_last, label smoothing, AGC unless the model is a BN twin, fused
Nesterov SGD) plus the EMA update, on one batch of 128, eager (a compiled step fuses the groups
into kernels the profiler cannot name); and, timed apart, what the training loop does to a
batch before the step (the in-memory crop, flip and erasing of the `fmnist` preset, then the
resize of progressive resizing). Run alone on the machine:

    python benchmarks/step_profile.py                     # nfnet_s0 and its BN twin, 28 px
    python benchmarks/step_profile.py nfnet_s0_dense --image-size 20 28 --threads 1
    python benchmarks/step_profile.py nfnet_s0_dense --threads 1 --compile  # + eager vs compiled

With `--compile` it also times the step eager against the step with the model under
`torch.compile` (as `--compile` trains), alternately step by step so that both see the same
machine speed, and reports how long the compiled step's first call (the compilation) took.
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import normfree
from normfree.analysis.bench import make_train_step, time_calls
from normfree.data.batch_augment import BatchAugment
from normfree.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD
from normfree.training.optim import EMA
from normfree.training.resizing import downscaled

GROUPS = {"conv": ("convolution",), "norm (BN or WS)": ("batch_norm", "_StandardizeWeight"),
          "activation": ("silu", "gelu", "relu", "sigmoid"),
          "AGC": ("vector_norm", "_foreach_norm", "_foreach_mul", "cumsum", "diff"),
          "optimizer": ("_fused_sgd",), "EMA": ("lerp",),
          "copy/convert": ("copy_", "_to_copy")}


def profiled_shares(step, repeats=10):
    """(ms a step, {group: % of the profiled time}) over `repeats` steps after a warm-up."""
    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {group: round(100 * sum(e.self_cpu_time_total for e in events
                                     if any(k in e.key for k in keys)) / total, 1)
              for group, keys in GROUPS.items()}
    shares["other"] = round(100 - sum(shares.values()), 1)
    return total / repeats / 1000, shares


def batch_preparation_ms(size, full_size=28, repeats=50):
    """ms to augment a uint8 batch of 128 as the `fmnist` preset does and bring it to `size`."""
    augment = BatchAugment(crop_padding=2, flip=True, random_erasing=0.25)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (128, 1, full_size, full_size), dtype=torch.uint8)
    start = time.perf_counter()
    for _ in range(repeats):
        images = augment(batch, augment.draw(len(batch), full_size, full_size, generator))
        images = (images.float() / 255 - FMNIST_MEAN[0]) / FMNIST_STD[0]
        if size != full_size:
            images = downscaled(images, size)
    return (time.perf_counter() - start) / repeats * 1000


def loop_step(name, size, labels, compile=False):
    """One call: `train_step` then the EMA update, as the loop does, for model `name`."""
    torch.manual_seed(0)
    model = normfree.create_model(name, 10).to(memory_format=torch.channels_last)
    images = torch.randn(128, 1, size, size).contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model, dynamic=False) if compile else None
    train, _ = make_train_step(model, images, labels, 0.0 if name.endswith("_bn") else 0.04,
                               precision="bf16", forward=forward)
    ema = EMA(model, 0.999)

    def step():
        train()
        ema.update(model, 1000)
    return step


def eager_against_compiled(name, size, labels, repeats=30):
    """(eager ms, compiled ms, seconds the compiled step's first call took): medians of steps
    timed alternately, after warm-ups."""
    eager, compiled = loop_step(name, size, labels), loop_step(name, size, labels, compile=True)
    start = time.perf_counter()
    compiled()
    compile_seconds = time.perf_counter() - start
    (eager_s, _, _), (compiled_s, _, _) = time_calls(eager, compiled, repeats=repeats)
    return eager_s * 1000, compiled_s * 1000, compile_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["nfnet_s0", "nfnet_s0_bn"])
    parser.add_argument("--image-size", type=int, nargs="+", default=[28])
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")
    parser.add_argument("--compile", action="store_true",
                        help="also time the step eager against compiled")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (128,))
    for name in args.models:
        for size in args.image_size:
            ms, shares = profiled_shares(loop_step(name, size, labels))
            print(f"{name} at {size} px: {ms:.1f} ms/step (profiled), % of step: {shares}; "
                  f"the batch before it: {batch_preparation_ms(size):.1f} ms")
            if args.compile:
                eager, compiled, seconds = eager_against_compiled(name, size, labels)
                print(f"{name} at {size} px: eager {eager:.1f} ms, compiled {compiled:.1f} ms a "
                      f"step ({eager / compiled:.2f}×); compiling took {seconds:.0f} s")

if __name__ == "__main__":
    main()
