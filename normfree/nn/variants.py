"""Every named variant as one `NFConfig` line (docs/architecture.md §6), the numerics switch and
the batch-norm twins' names; plain data, importable without torch (`zoo.py` builds models).

Small-image variants (`*_s*`, `*_tiny`) are ours: the papers' block rules with smaller widths and
stems. timm's own models (`nfnet_l0`, `eca_nfnet_l*`, `test_nfnet`, `timm_nf_*`) carry timm's
conventions in their configs. `numerics="timm"` switches a config to timm's `dm_nfnet_*`
conventions (exact GELU, WS eps added, stochastic depth rescaled) so that timm's weights give
timm's logits.
"""

from dataclasses import replace

from ..errors import ConfigError
from .config import NFConfig


def _nfnet(n, plus=False, **kw):
    """NFNet-F{n}: depths (1, 2, 6, 3)·(n + 1); per-variant sizes and dropout
    (docs/architecture.md §6)."""
    sizes = [(192, 256), (224, 320), (256, 352), (320, 416), (384, 512), (416, 544),
             (448, 576), (480, 608)]
    widths, stem_end, final = ((384, 768, 2048, 2048), 192, 4096) if plus else (
        (256, 512, 1536, 1536), 128, 3072)
    return NFConfig(depths=tuple(d * (n + 1) for d in (1, 2, 6, 3)), widths=widths,
                    stem_widths=(16, 32, 64, stem_end), final_channels=final,
                    dropout=(0.2, 0.3, 0.4, 0.4, 0.5, 0.5, 0.5, 0.5)[n],
                    train_size=sizes[n][0], test_size=sizes[n][1], **kw)


NF_RESNET = NFConfig(
    depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048), strides=(1, 2, 2, 2),
    activation="relu", bottleneck_ratio=0.25, group_width=None, second_conv=False,
    attention=None, shortcut_avg_pool=False, stem_widths=(64,), stem_strides=(2,),
    stem_kernel=7, stem_max_pool=True, final_channels=0, dropout=0.0, stochastic_depth=0.1)


def _nf_regnet(widths, depths, train_size, test_size, dropout):
    widths = tuple(int(w * 0.75) for w in widths)
    return NFConfig(
        depths=depths, widths=widths, strides=(2, 2, 2, 2), activation="silu",
        bottleneck_ratio=2.25, bottleneck_from_input=True, first_block_ratio=1.0, group_width=8,
        second_conv=False, se_ratio=0.5, se_on_bottleneck=True, stem_widths=(widths[0],),
        stem_strides=(2,), final_channels=1280 * widths[-1] // 440, dropout=dropout,
        stochastic_depth=0.1, classifier_init="zeros", train_size=train_size,
        test_size=test_size)


# timm's own NF models (Wightman, pytorch-image-models `nfnet.py`), with the conventions of its
# `NormFreeNet`: PyTorch's symmetric padding, WS eps added, γ in every conv (none after the last
# activation), no skip gain (SkipInit, when on, zeroes the last conv's gain), channels rounded
# to multiples of 8, drop-path rescaled. Train/test sizes: those timm's weights were made at.
_TIMM = dict(ws_eps="add", padding="symmetric", gamma_placement="conv", skip_gain=False,
             channel_divisor=8, stochastic_depth_rescale=True)


def _timm_nfnet(depths, final, attention, widths=(256, 512, 1536, 1536), group_width=64,
                stem_end=128, **kw):
    """timm's light NFNets (L family, `test_nfnet`): the F models' 4-conv stem and extra 3×3,
    SiLU, bottleneck 0.25, group width 64, SE 0.25 or ECA."""
    return NFConfig(depths=depths, widths=widths, activation="silu", bottleneck_ratio=0.25,
                    group_width=group_width, attention=attention, se_ratio=0.25,
                    stem_widths=(stem_end // 8, stem_end // 4, stem_end // 2, stem_end),
                    final_channels=final, **_TIMM, **kw)


# Small-image variants (28-64 px, ours): NFNet blocks with narrower stages, group width 32, a
# two-conv stem of stride 2 and stage strides 1, 1, 2, 2, so 28 px reaches the last stage at
# 4×4. SiLU: on CPU the tanh GELU is a large part of a training step, SiLU less
# (docs/results.md); its γ comes from the same table.
_SMALL = dict(strides=(1, 1, 2, 2), stem_strides=(2, 1), stem_widths=(16, 32), group_width=32,
              final_channels=0, train_size=28, test_size=28, in_chans=1, dropout=0.1,
              stochastic_depth=0.1, activation="silu")

_S0 = NFConfig(depths=(1, 1, 2, 1), widths=(64, 128, 256, 256), **_SMALL)
# The stem keeps 28 px and the first block halves it: its two 3×3 convs see every pixel.
FULL_RESOLUTION = dict(stem_strides=(1, 1), strides=(2, 1, 2, 2))

VARIANTS = {
    **{f"nfnet_f{n}": _nfnet(n) for n in range(8)},
    **{f"nfnet_f{n}_plus": _nfnet(n, plus=True) for n in range(8)},
    **{f"nf_resnet{k}": replace(NF_RESNET, depths=d) for k, d in [
        (26, (2, 2, 2, 2)), (50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3)),
        (200, (3, 24, 36, 3)), (288, (24, 24, 24, 24)), (600, (50, 50, 50, 50))]},
    "nf_regnet_b0": _nf_regnet((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2),
    "nf_regnet_b1": _nf_regnet((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2),
    "nf_regnet_b2": _nf_regnet((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3),
    "nf_regnet_b3": _nf_regnet((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3),
    "nf_regnet_b4": _nf_regnet((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4),
    "nf_regnet_b5": _nf_regnet((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4),
    "nfnet_l0": _timm_nfnet((1, 2, 6, 3), 2304, "se", train_size=224, test_size=288),
    "eca_nfnet_l0": _timm_nfnet((1, 2, 6, 3), 2304, "eca", train_size=224, test_size=288),
    "eca_nfnet_l1": _timm_nfnet((2, 4, 12, 6), 3072, "eca", train_size=256, test_size=320),
    "eca_nfnet_l2": _timm_nfnet((3, 6, 18, 9), 3072, "eca", train_size=320, test_size=384),
    "eca_nfnet_l3": _timm_nfnet((4, 8, 24, 12), 3072, "eca", train_size=352, test_size=448),
    "test_nfnet": _timm_nfnet((1, 1, 1, 1), 192, "se", widths=(32, 64, 96, 128), group_width=8,
                              train_size=160, test_size=160),
    # timm's `nf_resnet50` differs from the paper's: no skip gains, and an avg-pool + 1×1
    # shortcut on strided blocks (the paper strides the 1×1).
    "timm_nf_resnet50": replace(NF_RESNET, shortcut_avg_pool=True, train_size=256,
                                test_size=288, **_TIMM),
    # timm's `nf_regnet_b1`, "not to paper spec" (its own words): widths, the stem and the
    # bottleneck and SE widths rounded to multiples of 8, no skip gains.
    "timm_nf_regnet_b1": replace(
        _nf_regnet((48, 104, 208, 440), (2, 4, 7, 7), 256, 288, 0.2), widths=(40, 80, 160, 328),
        stem_widths=(40,), classifier_init="normal", **_TIMM),
    "nfnet_s0": _S0,
    # nfnet_s0 with one dense 3×3 in each block where it had two grouped 3×3s and squeeze-excite,
    # and its stem at full resolution: 4× the 3×3 MACs, yet on CPU the same step time, because
    # grouped convs and SE cost more time than their MACs (docs/benchmarks.md, "What each part
    # of the block costs"); more accuracy per epoch on Fashion-MNIST (docs/results.md).
    "nfnet_s0_dense": replace(_S0, second_conv=False, attention=None, group_width=None,
                              **FULL_RESOLUTION),
    # The full-resolution stem: a little more time per step and higher accuracy
    # (docs/results.md, fmnist-long).
    "nfnet_s1": NFConfig(depths=(1, 2, 3, 2), widths=(96, 192, 384, 384),
                         **{**_SMALL, **FULL_RESOLUTION}),
    "nf_resnet_s26": replace(NF_RESNET, depths=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                             stem_widths=(32,), stem_strides=(1,), stem_kernel=3,
                             stem_max_pool=False, train_size=28, test_size=28, in_chans=1),
    "nfnet_tiny": NFConfig(depths=(1, 1), widths=(32, 64), strides=(1, 2), stem_widths=(8, 16),
                           stem_strides=(2, 1), group_width=8, se_ratio=0.25, final_channels=64,
                           dropout=0.0, stochastic_depth=0.0, train_size=16, test_size=16),
}

def apply_numerics(cfg, numerics):
    """'deepmind' (reference) or 'timm' (exact GELU, WS eps added, rescaled stochastic depth)."""
    if numerics == "deepmind":
        return cfg
    if numerics == "timm":
        activation = "gelu_exact" if cfg.activation == "gelu" else cfg.activation
        return replace(cfg, activation=activation, ws_eps="add", stochastic_depth_rescale=True)
    raise ConfigError(f"numerics must be 'deepmind' or 'timm', got {numerics!r}")


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
    raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
