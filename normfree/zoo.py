"""The model zoo: names → models, and the parameter / MAC counts that SPEC §6 tabulates."""

from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from .baselines import ORDERS, BNNet
from .models import CONFIG_FIELDS, VARIANTS, NFNet, apply_numerics


def bn_twin_name(name):
    """`nf_resnet50` → `resnet50_bn`, `nfnet_s0` → `nfnet_s0_bn`."""
    return name.replace("nf_", "", 1) + "_bn"


BN_TWINS = {bn_twin_name(name): name for name in VARIANTS
            if name.startswith(("nf_resnet", "nfnet_s", "nfnet_tiny"))}


def list_models():
    """Every model name `create_model` accepts: NF variants, then their BN twins."""
    return list(VARIANTS) + list(BN_TWINS)


def get_config(name):
    if name in VARIANTS:
        return VARIANTS[name]
    if name in BN_TWINS:
        return VARIANTS[BN_TWINS[name]]
    raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def create_model(name, num_classes=1000, *, numerics="deepmind", **overrides):
    """Build a model by name. Returns logits for NCHW float input.

    `numerics`: "deepmind" (the reference, default) or "timm" (timm's `dm_nfnet_*` conventions).
    `overrides`: any `NFConfig` field (e.g. `in_chans=1`, `dropout=0.0`); BN twins also take
    `order` ("bn_act" or "act_bn").
    """
    cfg = get_config(name)
    order = overrides.pop("order", "bn_act") if name in BN_TWINS else None
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        extra = " and 'order'" if order is not None else ""
        raise ValueError(f"unknown override(s) {unknown} for {name!r}; valid keys: "
                         f"{', '.join(CONFIG_FIELDS)}{extra}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    cfg = apply_numerics(replace(cfg, **overrides), numerics)
    if order is not None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        model = BNNet(cfg, num_classes, order)
    else:
        model = NFNet(cfg, num_classes)
    model.name = name
    return model


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model, image_size=None):
    """Multiply-accumulates of one forward pass at `image_size` (default: the test size).

    Counts convolutions and linear layers (SE and classifier), as SPEC §6 does. Runs on the meta
    device, so it is fast and allocates nothing even for the largest variants.
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
