"""Models by name: `build_model`, and the parameter / MAC counts of a built model."""

from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from .bn_twins import ORDERS, BNNet
from .config import CONFIG_FIELDS
from .network import NFNet
from .variants import BN_TWINS, apply_numerics, get_config


def build_model(name, num_classes=1000, *, numerics="deepmind", **overrides):
    """Build a model by name, with fresh weights (the public `normfree.create_model` calls this
    and adds `pretrained=True` and `device`). Returns logits for NCHW float input.

    `numerics`: "deepmind" (the reference, default) or "timm" (timm's `dm_nfnet_*` conventions).
    `overrides`: any `NFConfig` field (e.g. `in_chans=1`, `dropout=0.0`); BN twins also take
    `order` ("bn_act" or "act_bn").
    """
    cfg = get_config(name)
    order = overrides.pop("order", "bn_act") if name in BN_TWINS else None
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        extra = " and 'order'" if order is not None else ""
        raise ConfigError(f"unknown override(s) {unknown} for {name!r}; valid keys: "
                         f"{', '.join(CONFIG_FIELDS)}{extra}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    cfg = apply_numerics(replace(cfg, **overrides), numerics)
    if order is not None:
        if order not in ORDERS:
            raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
        model = BNNet(cfg, num_classes, order)
    else:
        model = NFNet(cfg, num_classes)
    model.name = name
    return model


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model, image_size=None):
    """Multiply-accumulates of one forward pass at `image_size` (default: the test size).

    Counts convolutions and linear layers (SE and classifier), as docs/architecture.md §6 does.
    Runs on the meta device, so it is fast and allocates nothing even for the largest variants.
    """
    size = image_size or model.cfg.test_size
    meta = {k: torch.empty_like(v, device="meta")
            for k, v in list(model.named_parameters()) + list(model.named_buffers())}
    x = torch.empty(1, model.cfg.in_chans, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            torch.func.functional_call(model, meta, (x,))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
