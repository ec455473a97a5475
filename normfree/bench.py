"""Throughput harness: train step (forward, backward, AGC, optimizer step), inference, and
inference with Scaled WS folded (`fold_ws`), timed separately with warm-up and repeats; median and
spread in images per second."""

import copy
import statistics
import time

import torch
import torch.nn.functional as F

from .agc import clip_param_groups_, param_groups
from .deploy import fold_ws
from .report import machine_info
from .zoo import create_model


def time_calls(fn, warmup=3, repeats=10):
    """Seconds per call of `fn`: (median, min, max) over `repeats` timed calls after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def make_train_step(model, images, labels, clip_factor=0.01, bf16=False):
    optimizer = torch.optim.SGD(param_groups(model, 1e-5, clip_factor), lr=1e-3, momentum=0.9,
                                nesterov=True)

    def step():
        with torch.autocast(images.device.type, torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_factor:
            clip_param_groups_(optimizer)
        optimizer.step()
    return step, optimizer


def bench(model_name="nfnet_s0", image_size=None, batch_size=16, num_classes=10, in_chans=None,
          bf16=False, channels_last=True, clip_factor=0.01, repeats=10, device=None):
    """One record: train and inference img/s (median, min, max), and AGC's share of the step."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {} if in_chans is None else {"in_chans": in_chans}
    model = create_model(model_name, num_classes, **overrides).to(device)
    size = image_size or model.cfg.train_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, model.cfg.in_chans, size, size, generator=g).to(device)
    images = images.contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    step, optimizer = make_train_step(model, images, labels, clip_factor, bf16)
    train_time = time_calls(step, repeats=repeats)
    agc_time = time_calls(lambda: clip_param_groups_(optimizer), repeats=repeats)
    model.eval()

    @torch.no_grad()
    def infer():
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            model(images)
    infer_time = time_calls(infer, repeats=repeats)
    model = fold_ws(copy.deepcopy(model))  # `infer` reads `model` when called: the folded copy
    folded_time = time_calls(infer, repeats=repeats)
    rate = lambda t: [round(batch_size / x, 1) for x in (t[0], t[2], t[1])]  # noqa: E731
    return {"model": model_name, "image_size": size, "batch_size": batch_size,
            "dtype": "bf16" if bf16 else "fp32", "channels_last": channels_last,
            "train_img_s": rate(train_time), "infer_img_s": rate(infer_time),
            "infer_folded_img_s": rate(folded_time),
            "agc_fraction_of_step": agc_time[0] / train_time[0], **machine_info()}
