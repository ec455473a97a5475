"""A run's config resolved for this machine: the automatic settings filled in, and the sizes
no process here could hold refused before anything allocates."""

from dataclasses import replace

from ..errors import ConfigError
from ..nn.counts import activation_sizes
from ..nn.variants import get_config
from ..runtime import check_precision, default_precision, refuse_unaffordable


def resolve_config(cfg, device, saved=None, source=None):
    """`cfg` with its automatic (None) fields filled, so that the saved config replays the run
    exactly: when resuming, as the `saved` config resolved them; when fine-tuning, from the
    `source` weights (`initial_weights`). Reads no file: the device's abilities and the model
    table only."""
    if saved is not None:
        cfg = replace(cfg, **{k: saved[k] for k in ("model", "numerics", "image_size", "steps")
                              if getattr(cfg, k) is None and k in saved})
    if cfg.precision is None:
        cfg = replace(cfg, precision=default_precision(device))
    check_precision(cfg.precision, device)
    if cfg.eval_precision is not None:
        check_precision(cfg.eval_precision, device)
    if source is not None:
        cfg = replace(cfg, model=source.name, numerics=cfg.numerics or source.numerics)
    if cfg.model is None:
        raise ConfigError("--model: none given and no --init-from weights to take it from")
    if cfg.test_size is None and cfg.dataset == "folder":
        # the model's own pair of sizes, or evaluation at the size given for training
        model = get_config(cfg.model)
        cfg = replace(cfg, test_size=cfg.image_size or model.test_size)
    if cfg.image_size is None:  # the size the weights were trained at, else the model's
        cfg = replace(cfg, image_size=(source and source.train_size)
                      or get_config(cfg.model).train_size)
    if cfg.channels_last is None:
        cfg = replace(cfg, channels_last=channels_last_pays(cfg.model, device))
    return cfg


def channels_last_pays(model_name, device):
    """channels_last, but on CUDA for models without grouped convolutions only: timm's training
    benchmark (RTX 3090, PyTorch 1.12) has dm_nfnet_f0 training 2.4× slower in channels_last,
    because of its grouped convolutions, and no GPU has measured normfree's yet
    (scripts/gpu_check.sh times both)."""
    return device.type != "cuda" or not get_config(model_name).group_width


def micro_batch_size(cfg, world_size):
    """How many images each process computes at once: --device-batch-size, or its whole part of
    the global batch. The global batch must be a whole number of micro-batches on every
    process."""
    micro = cfg.device_batch_size or max(cfg.batch_size // world_size, 1)
    if cfg.batch_size % (world_size * micro):
        processes = f"{world_size} process{'es' if world_size > 1 else ''}"
        given = (f"{processes} × --device-batch-size {micro}" if cfg.device_batch_size
                 else processes)
        raise ConfigError(f"--batch-size {cfg.batch_size} (the global batch) must be a multiple "
                          f"of {given} = {world_size * micro}")
    return micro


def refuse_unaffordable_run(cfg, device, world_size=1):
    """Refuse sizes (image, batch, synthetic set) whose memory this machine surely lacks, before
    anything allocates: a lower bound from the layer outputs alone (`activation_sizes`)."""
    largest, total = activation_sizes(get_config(cfg.model), cfg.image_size)
    kept = 2 * largest if cfg.grad_checkpointing else total  # what backward needs kept
    micro = cfg.device_batch_size or -(-cfg.batch_size // world_size)
    train = micro * kept * (2 if cfg.precision in ("bf16", "fp16") else 4)
    evaluation = cfg.eval_batch_size * 2 * largest * 4
    synthetic = cfg.synthetic_size * cfg.in_chans * cfg.image_size ** 2 if (
        cfg.dataset == "synthetic") else 0
    refuse_unaffordable(max(train, evaluation) + synthetic, device,
                        f"--image-size {cfg.image_size} with --batch-size {cfg.batch_size}, "
                        f"--eval-batch-size {cfg.eval_batch_size}"
                        + (f" and --synthetic-size {cfg.synthetic_size}" if synthetic else ""))
