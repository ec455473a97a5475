"""What each part of the default model's block costs a training step: `nfnet_s0` and variants of
it without the second grouped 3×3 (conv2b), without squeeze-excite, with ECA instead, with dense
3×3 convs, with the full-resolution stem, and at other batch sizes. Each is compiled (bf16
autocast, channels_last, AGC λ 0.04: the `fmnist` preset's step) and the steps are timed
interleaved in one process, so the ratios to `nfnet_s0` hold on a shared machine.

Run: python benchmarks/block_variants.py [--threads 1] [NAME[@BATCH] ...]"""
import argparse
import json
from dataclasses import replace

import torch

from normfree.analysis.bench import make_train_step, time_calls
from normfree.nn.network import NFNet
from normfree.nn.variants import FULL_RESOLUTION, VARIANTS

S0 = replace(VARIANTS["nfnet_s0"], dropout=0.0, stochastic_depth=0.0)  # as the preset trains it
LEAN = dict(second_conv=False, attention=None)
CANDIDATES = {
    "nfnet_s0": S0,
    "no_conv2b": replace(S0, second_conv=False),
    "no_se": replace(S0, attention=None),
    "eca": replace(S0, attention="eca"),
    "lean": replace(S0, **LEAN),
    "eca_no_conv2b": replace(S0, attention="eca", second_conv=False),
    "full_resolution": replace(S0, **FULL_RESOLUTION),
    "lean_full_resolution": replace(S0, **LEAN, **FULL_RESOLUTION),
    "lean_dense": replace(S0, **LEAN, group_width=None),
    "lean_dense_full_resolution": replace(VARIANTS["nfnet_s0_dense"], dropout=0.0,
                                          stochastic_depth=0.0),  # the named variant
    "lean_depths_1221": replace(S0, **LEAN, depths=(1, 2, 2, 1)),
}
DEFAULT = [*CANDIDATES, "nfnet_s0@64", "nfnet_s0@256"]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--repeats", type=int, default=12)
parser.add_argument("names", nargs="*", default=DEFAULT,
                    help=f"NAME[@BATCH] (batch 128 by default); names: {', '.join(CANDIDATES)}")
args = parser.parse_args()
torch.set_num_threads(args.threads)

steps = []
for spec in args.names:
    name, _, batch = spec.partition("@")
    batch = int(batch or 128)
    torch.manual_seed(0)
    model = NFNet(CANDIDATES[name], 10).to(memory_format=torch.channels_last)
    images = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    step, _ = make_train_step(model, images, labels, 0.04, precision="bf16",
                              forward=torch.compile(model))
    step()  # compile outside the timing
    steps.append((spec, batch, step, sum(p.numel() for p in model.parameters())))

times = time_calls(*[step for _, _, step, _ in steps], repeats=args.repeats)
reference = None
for (spec, batch, _, params), (median, fastest, _) in zip(steps, times):
    rate = batch / median
    reference = reference or rate
    print(json.dumps({"variant": spec, "threads": args.threads, "params": params,
                      "train_img_s": round(rate, 1), "fastest_img_s": round(batch / fastest, 1),
                      "vs_first": round(rate / reference, 3)}))
