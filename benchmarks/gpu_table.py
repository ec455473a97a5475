"""normfree against timm on a CUDA GPU, one table: training steps (forward, backward, AGC, SGD)
at each model's train size and inference at its test size, per precision (fp16 with loss
scaling, bf16 where native), eager and compiled, channels_last and contiguous.

Rows run most telling first (eager rows, then compiled ones) and stop starting new rows when
`--budget` seconds are spent, so the script ends in time on a slower GPU and says what it left
out. Each row times ours and timm's calls interleaved (bench.time_calls), so a row's ratio holds
even where the GPU's clock moves between rows.

    python benchmarks/gpu_table.py [--budget 360] [--models nfnet_f0 eca_nfnet_l0]
"""

import argparse
import itertools
import time

import torch

from normfree.analysis.bench import (TIMM_PEERS, make_infer, make_timm_train_step,
                                     make_train_step, time_calls)
from normfree import create_model
from normfree.runtime import bf16_available, machine_info
import timm

BATCH = {"nfnet_f0": 64, "eca_nfnet_l0": 128}


def rows(models, precisions):
    eager = itertools.product(models, precisions, (True, False), (False,))
    compiled = itertools.product(models, precisions[:1], (True, False), (True,))
    return [*eager, *compiled]


def pair(name, precision, channels_last, compile_model, batch, device):
    """(ours, timm's) train and inference images/s, and their ratios."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours = create_model(name, 1000).to(device, memory_format=fmt)
    peer = timm.create_model(TIMM_PEERS[name], num_classes=1000, drop_rate=ours.cfg.dropout,
                             drop_path_rate=ours.cfg.stochastic_depth).to(
                                 device, memory_format=fmt)
    result = {}
    for phase, size in (("train", ours.cfg.train_size), ("infer", ours.cfg.test_size)):
        images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        labels = torch.randint(0, 1000, (batch,), device=device)
        forwards = [torch.compile(m) if compile_model else m for m in (ours, peer)]
        if phase == "train":
            calls = [make_train_step(ours, images, labels, 0.01, precision, forwards[0])[0],
                     make_timm_train_step(peer, images, labels, 0.01, precision, forwards[1],
                                          fused=True)]
        else:
            calls = [make_infer(m, images, precision, compile_model) for m in (ours, peer)]
        times = time_calls(*calls, warmup=3, repeats=10)
        result[phase] = [batch / t[0] for t in times]
        ours.train(), peer.train()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=360, help="seconds (default 360)")
    parser.add_argument("--models", nargs="+", default=list(BATCH))
    parser.add_argument("--batch", type=int, default=None, help="default: per model, BATCH")
    parser.add_argument("--device", default="cuda", help="default: cuda (cpu: a dry run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    precisions = ["bf16", "fp16"] if bf16_available(device) else ["fp16"]
    start, left_out = time.time(), []
    print(f"{machine_info()['cuda'] or machine_info()['cpu']}, torch {torch.__version__}, "
          f"timm {timm.__version__}")
    print(f"{'model':<14}{'prec':<6}{'layout':<15}{'compile':<9}{'train img/s':>13}"
          f"{'timm':>9}{'×':>7}{'infer img/s':>13}{'timm':>9}{'×':>7}")
    for name, precision, channels_last, compile_model in rows(args.models, precisions):
        if time.time() - start > args.budget:
            left_out.append((name, precision, channels_last, compile_model))
            continue
        r = pair(name, precision, channels_last, compile_model,
                 args.batch or BATCH.get(name, 64), device)
        layout = "channels_last" if channels_last else "contiguous"
        print(f"{name:<14}{precision:<6}{layout:<15}{str(compile_model):<9}"
              f"{r['train'][0]:>13.0f}{r['train'][1]:>9.0f}{r['train'][0] / r['train'][1]:>7.2f}"
              f"{r['infer'][0]:>13.0f}{r['infer'][1]:>9.0f}{r['infer'][0] / r['infer'][1]:>7.2f}",
              flush=True)
    if left_out:
        print(f"left out after {args.budget:.0f} s: {left_out}")


if __name__ == "__main__":
    main()
