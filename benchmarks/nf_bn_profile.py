"""Where a train step of nfnet_s0 and of its BN twin spends its time (batch 128, 1×28×28,
bf16 autocast, channels_last, training's own `train_step`: label smoothing, AGC for the NF
model, fused Nesterov SGD), grouped by operator, and what the per-image augmentation of one
batch costs next to it. Run alone on the machine: python benchmarks/nf_bn_profile.py"""
import time

import torch
from torch.profiler import ProfilerActivity, profile

import normfree
from normfree.analysis.bench import make_train_step
from normfree.data.transforms import small_image_transform

GROUPS = {"conv": ("convolution",), "norm (BN or WS)": ("batch_norm", "_StandardizeWeight"),
          "activation": ("silu", "gelu", "relu", "sigmoid"),
          "AGC": ("vector_norm", "_foreach_norm", "_foreach_mul", "cumsum", "diff"),
          "optimizer": ("_fused_sgd",), "copy/convert": ("copy_", "_to_copy")}

torch.manual_seed(0)
images = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (128,))
for name in ("nfnet_s0", "nfnet_s0_bn"):
    model = normfree.create_model(name, 10).to(memory_format=torch.channels_last)
    step, _ = make_train_step(model, images, labels, 0.0 if name.endswith("_bn") else 0.04,
                              bf16=True)
    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {group: round(100 * sum(e.self_cpu_time_total for e in events
                                     if any(k in e.key for k in keys)) / total, 1)
              for group, keys in GROUPS.items()}
    shares["other"] = round(100 - sum(shares.values()), 1)
    print(f"{name}: {total / 10 / 1000:.1f} ms/step (profiled), % of step: {shares}")

augment = small_image_transform(28, 2, True, None, 0.25)
batch = torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8)
start = time.perf_counter()
for _ in range(10):
    torch.stack([augment(image) for image in batch])
print(f"augmentation of a 128-image batch: {(time.perf_counter() - start) / 10 * 1000:.1f} ms")
