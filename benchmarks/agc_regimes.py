"""Run alone: python benchmarks/agc_regimes.py

AGC on NFNet-F0's parameters (channels_last), ours vs timm's adaptive_clip_grad, for two
gradient scales: most units clipped, and few clipped. Each timed call first restores the
same gradients (a clipped gradient sits exactly at the threshold afterwards); the restore is
timed alone and subtracted."""
import torch
from timm.utils.agc import adaptive_clip_grad

import normfree
from normfree.training.agc import adaptive_clip_grad_
from normfree.analysis.bench import time_calls


def compare(params, scale):
    saved = [torch.randn_like(p) * scale for p in params]
    for p, g in zip(params, saved):
        p.grad = g.clone()
    grads = [p.grad for p in params]

    def restore():
        torch._foreach_copy_(grads, saved)
    fraction = adaptive_clip_grad_(params, 0.01).item()
    t = time_calls(restore, lambda: (restore(), adaptive_clip_grad_(params, 0.01)),
                   lambda: (restore(), adaptive_clip_grad(params, 0.01)), repeats=15)
    ours, timm = t[1][0] - t[0][0], t[2][0] - t[0][0]
    print(f"grad scale {scale:g}: {fraction:.1%} of units clipped; ours {ours * 1e3:.1f} ms, "
          f"timm {timm * 1e3:.1f} ms, ratio {timm / ours:.2f}x (restore {t[0][0] * 1e3:.1f} ms)")


torch.manual_seed(0)
model = normfree.create_model("nfnet_f0", 1000).to(memory_format=torch.channels_last)
clipped_params = [p for n, p in model.named_parameters() if n != "head.fc.weight"]
for grad_scale in (1e-3, 2e-4):
    compare(clipped_params, grad_scale)
