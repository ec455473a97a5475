"""Throughput harness: train step (forward, backward, AGC, optimizer step), inference, and
inference with Scaled WS folded (`fold_ws`), timed separately with warm-up and repeats; median and
spread in images per second. A timm peer runs through the same code in the same process, its
calls interleaved with ours so that machine noise hits both alike; the machine's GEMM and 3×3
conv throughput give the ceiling that achieved GFLOP/s are compared with."""

import contextlib
import copy
import functools
import multiprocessing
import resource
import statistics
import time

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F

from ..errors import ConfigError, MissingDependency
from ..nn.zoo import build_model, count_macs
from ..runtime import autocast, default_device, loss_scaler, machine_info
from ..training.agc import clip_param_groups_
from ..training.optim import make_optimizer, train_step
from ..weights.deploy import fold_ws

# normfree model → the timm model a user would pick instead (same architecture and widths)
TIMM_PEERS = {**{f"nfnet_f{i}": f"dm_nfnet_f{i}" for i in range(7)},
              "nf_resnet26": "nf_resnet26", "nf_resnet50": "nf_resnet50",
              "nf_resnet101": "nf_resnet101", "nf_regnet_b0": "nf_regnet_b0",
              "nf_regnet_b1": "nf_regnet_b1", "nfnet_l0": "nfnet_l0",
              "eca_nfnet_l0": "eca_nfnet_l0"}


def time_calls(*fns, warmup=3, repeats=10):
    """Seconds per call of each function, calls interleaved: [(median, min, max), ...]."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            if torch.cuda.is_initialized():  # wait for the queued kernels
                torch.cuda.synchronize()
            record.append(time.perf_counter() - start)
    return [(statistics.median(t), min(t), max(t)) for t in times]


def make_train_step(model, images, labels, clip_factor=0.01, precision="fp32", forward=None):
    """`normfree train`'s own step (`train_step`: Nesterov SGD, fused, label smoothing 0.1,
    normfree's AGC, fp16 with loss scaling) on one batch, and its optimizer; `forward` (e.g.
    compiled) defaults to the model."""
    optimizer = make_optimizer(model, "sgd", lr=1e-3, momentum=0.9, weight_decay=1e-5,
                               clip_factor=clip_factor)
    scaler = loss_scaler(images.device, precision)
    forward = model if forward is None else forward

    def step():
        train_step(forward, optimizer, images, labels, label_smoothing=0.1, precision=precision,
                   scaler=scaler)
    return step, optimizer


def make_timm_train_step(model, images, labels, clip_factor=0.01, precision="fp32",
                         forward=None, fused=False):
    """timm's recipe for the same step: one SGD group (PyTorch's default multi-tensor update,
    or with `fused` the same fused kernel as ours), its AGC on all but the head."""
    from timm.utils.agc import adaptive_clip_grad
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True,
                                weight_decay=1e-5, fused=fused)
    clipped = list(model.parameters())[:-2]  # timm's positional exclusion of the classifier
    forward = model if forward is None else forward
    scaler = loss_scaler(images.device, precision)

    def step():
        with autocast(images.device, precision):
            loss = F.cross_entropy(forward(images).float(), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        if clip_factor:
            adaptive_clip_grad(clipped, clip_factor)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    return step


def make_infer(model, images, precision, compile_model=False):
    """Inference on `images` as a call returning the logits; if `compile_model`, compiled with
    the weights constant-folded (inductor's freezing), as timm's best inference path. The first
    call compiles, and freezing is set around each call, not for the process (passed as a
    `torch.compile` option it did not take effect with torch 2.14)."""
    model.eval()
    frozen = contextlib.nullcontext
    if compile_model:
        model = torch.compile(model)
        frozen = functools.partial(inductor_config.patch, freezing=True)

    @torch.no_grad()
    def infer():
        with frozen(), autocast(images.device, precision):
            return model(images)
    return infer


def ceiling(device=None, repeats=5):
    """The machine's fp32 GFLOP/s on a 2048² GEMM and on a 3×3 conv (16×256×28² → 256)."""
    device = default_device(device)
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    x = torch.randn(16, 256, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    gemm, conv = time_calls(lambda: a @ b, lambda: F.conv2d(x, w, padding=1), repeats=repeats)
    return {"gemm_gflops": round(2 * 2048 ** 3 / gemm[0] / 1e9, 1),
            "conv3x3_gflops": round(2 * 16 * 256 * 256 * 9 * 28 * 28 / conv[0] / 1e9, 1)}


def bench(model_name="nfnet_s0", image_size=None, batch_size=16, num_classes=10, in_chans=None,
          precision="fp32", channels_last=True, clip_factor=0.01, repeats=10, device=None,
          grad_checkpointing=False, peer=None, compile_model=False):
    """One record: train, inference and folded-inference img/s as [median, min, max], AGC's
    share of the step, achieved GFLOP/s; with `peer="timm"` the same for timm's model."""
    device = default_device(device)
    overrides = {} if in_chans is None else {"in_chans": in_chans}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_name, num_classes, **overrides).to(device, memory_format=fmt)
    model.set_grad_checkpointing(grad_checkpointing)
    size = image_size or model.cfg.train_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, model.cfg.in_chans, size, size, generator=g).to(device)
    images = images.contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    forward = torch.compile(model) if compile_model else None
    ours, optimizer = make_train_step(model, images, labels, clip_factor, precision, forward)
    steps = [ours]
    if peer:
        peer_model = timm_peer(model_name, num_classes, device, fmt, model.cfg)
        peer_forward = torch.compile(peer_model) if compile_model else None
        steps += [make_timm_train_step(peer_model, images, labels, clip_factor, precision,
                                       peer_forward, fused) for fused in (False, True)]
    train_times = time_calls(*steps, repeats=repeats)
    ours()  # fresh gradients for timing AGC alone
    # A clipped gradient sits exactly at the threshold afterwards, so every timed call first
    # restores the step's gradients; the restore is timed alone and subtracted.
    owners = [p for p in model.parameters() if p.grad is not None]
    grads, saved = [p.grad for p in owners], [p.grad.clone() for p in owners]

    def restore():
        torch._foreach_copy_(grads, saved)
    agc = [restore, lambda: (restore(), clip_param_groups_(optimizer))]
    if peer:
        from timm.utils.agc import adaptive_clip_grad
        clipped = [p for g in optimizer.param_groups if g.get("clip_factor")
                   for p in g["params"] if p.grad is not None]  # the same tensors as ours
        agc.append(lambda: (restore(), adaptive_clip_grad(clipped, clip_factor or 0.01)))
    agc_times = time_calls(*agc, repeats=repeats)
    # a difference of two timings: of the fastest calls, which other work on the machine
    # disturbed least (medians under load can even give a negative difference)
    agc_times = [(t[1] - agc_times[0][1],) for t in agc_times[1:]]
    restore()
    clipped_fraction = clip_param_groups_(optimizer).item()
    infers = [make_infer(model, images, precision, compile_model)]
    folded = fold_ws(copy.deepcopy(model))
    infers.append(make_infer(folded, images, precision, compile_model))
    if peer:
        infers.append(make_infer(peer_model, images, precision, compile_model))
    # Reference points for the fast paths: timm's plain fp32 eager inference (what bf16/fp16 or
    # compiling is measured against) and our own eager path (against a compiled peer).
    extra = {}
    if peer and (precision != "fp32" or compile_model):
        extra["peer_eager_fp32"] = make_infer(peer_model, images, "fp32")
    if compile_model:
        extra["eager"] = make_infer(model, images, precision)
    infer_times = time_calls(*infers, *extra.values(), repeats=repeats)
    extra_times = dict(zip(extra, infer_times[len(infers):]))

    def rate(t):
        return [round(batch_size / x, 1) for x in (t[0], t[2], t[1])]
    macs = count_macs(model, size)
    record = {"model": model_name, "image_size": size, "batch_size": batch_size,
              "dtype": precision, "channels_last": channels_last,
              "compile": compile_model, "grad_checkpointing": grad_checkpointing,
              "train_img_s": rate(train_times[0]), "infer_img_s": rate(infer_times[0]),
              "infer_folded_img_s": rate(infer_times[1]),
              "agc_fraction_of_step": agc_times[0][0] / train_times[0][0],
              "agc_clipped_units": round(clipped_fraction, 4),
              "train_gflops": round(3 * 2 * macs * batch_size / train_times[0][0] / 1e9, 1),
              "infer_gflops": round(2 * macs * batch_size / infer_times[0][0] / 1e9, 1)}
    if peer:
        record.update({
            "peer": TIMM_PEERS[model_name], "peer_train_img_s": rate(train_times[1]),
            "peer_infer_img_s": rate(infer_times[2]),
            "train_ratio": round(train_times[1][0] / train_times[0][0], 3),
            "train_ratio_vs_peer_fused_sgd": round(train_times[2][0] / train_times[0][0], 3),
            "infer_ratio": round(infer_times[2][0] / infer_times[0][0], 3),
            "infer_folded_ratio": round(infer_times[2][0] / infer_times[1][0], 3),
            "agc_speedup_vs_timm": round(agc_times[1][0] / agc_times[0][0], 2)})
    if "peer_eager_fp32" in extra_times:
        record["infer_ratio_vs_peer_eager_fp32"] = round(
            extra_times["peer_eager_fp32"][0] / infer_times[0][0], 3)
    if "eager" in extra_times:
        record["eager_infer_img_s"] = rate(extra_times["eager"])
        if peer:
            record["eager_infer_ratio_vs_peer"] = round(
                infer_times[2][0] / extra_times["eager"][0], 3)
    return {**record, **machine_info()}


def timm_peer(model_name, num_classes, device, memory_format, cfg):
    """timm's model with the same dropout and stochastic depth as ours (its defaults are 0)."""
    if model_name not in TIMM_PEERS:
        raise ConfigError(f"no timm peer for {model_name!r}; peers exist for "
                         f"{', '.join(TIMM_PEERS)}")
    try:
        import timm
    except ImportError:
        raise MissingDependency("--peer timm needs timm: pip install timm") from None
    model = timm.create_model(TIMM_PEERS[model_name], pretrained=False, num_classes=num_classes,
                              drop_rate=cfg.dropout, drop_path_rate=cfg.stochastic_depth)
    return model.to(device, memory_format=memory_format)


def _peak_rss_of_train_step(queue, model_name, image_size, batch_size, grad_checkpointing):
    model = build_model(model_name)
    model.set_grad_checkpointing(grad_checkpointing)
    images = torch.randn(batch_size, model.cfg.in_chans, image_size, image_size)
    labels = torch.zeros(batch_size, dtype=torch.long)
    step, _ = make_train_step(model, images, labels)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((before / 1024, after / 1024))


def train_peak_memory(model_name, image_size, batch_size, grad_checkpointing=False):
    """Peak resident memory (MB) of CPU training steps, in a fresh process: (after creating the
    model, optimizer and batch; after two train steps). On CUDA use
    `torch.cuda.max_memory_allocated` instead."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_rss_of_train_step,
                              args=(queue, model_name, image_size, batch_size,
                                    grad_checkpointing))
    process.start()
    result = queue.get()
    process.join()
    return {"model": model_name, "image_size": image_size, "batch_size": batch_size,
            "grad_checkpointing": grad_checkpointing, "rss_mb_before_steps": round(result[0]),
            "peak_rss_mb": round(result[1])}


def format_record(record):
    """A bench record as aligned `label  value` lines; [median, min, max] as "median
    (min–max)"."""
    def text(value):
        if isinstance(value, list) and len(value) == 3:
            return f"{value[0]:,.1f}  ({value[1]:,.1f}–{value[2]:,.1f})"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)
    width = max(map(len, record))
    return "\n".join(f"{key.replace('_', ' '):<{width}}  {text(value)}"
                     for key, value in record.items())
