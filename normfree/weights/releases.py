"""The released NF weights normfree loads: where each lives on the Hugging Face Hub, the ImageNet
top-1 its makers published, and the evaluation preprocessing it was made for. Plain data,
importable without torch (`normfree list --pretrained`).

Preprocessing facts are timm's pretrained configs (`timm/models/nfnet.py`): test size, crop
fraction, crop mode, bicubic, ImageNet mean/std. DeepMind's own Haiku files keep the reference
preprocessing instead (docs/architecture.md §11).
"""

import math
from typing import NamedTuple, Optional

from ..data import IMAGENET_MEAN, IMAGENET_STD

HUB_PREFIX = "hf-hub:"


class Release(NamedTuple):
    tag: str                  # timm's name for the weights; the hub repo is timm/<tag>
    top1: Optional[float]     # ImageNet top-1 (%) as published; None: not published
    published_by: str         # where `top1` comes from
    test_size: int
    crop_pct: float
    crop_mode: str = "center"  # "center": shorter side resized; "squash": both sides
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    @property
    def hub_id(self):
        return f"{HUB_PREFIX}timm/{self.tag}"


_PAPER = "Brock et al. 2021, Table 3 (DeepMind's training)"
_TIMM_NOTES = "timm's release notes"
_F_SIZES = [(256, 0.9), (320, 0.91), (352, 0.92), (416, 0.94), (512, 0.951), (544, 0.954),
            (576, 0.956)]
_F_TOP1 = [83.6, 84.7, 85.1, 85.7, 85.9, 86.0, 86.5]  # F6: trained with SAM

# normfree model name → its released weights
RELEASES = {
    **{f"nfnet_f{n}": Release(f"dm_nfnet_f{n}.dm_in1k", _F_TOP1[n], _PAPER, size, pct, "squash")
       for n, (size, pct) in enumerate(_F_SIZES)},
    "nfnet_l0": Release("nfnet_l0.ra2_in1k", 82.75, _TIMM_NOTES, 288, 1.0),
    "eca_nfnet_l0": Release("eca_nfnet_l0.ra2_in1k", 82.6, _TIMM_NOTES, 288, 1.0),
    "eca_nfnet_l1": Release("eca_nfnet_l1.ra2_in1k", 84.1, _TIMM_NOTES, 320, 1.0),
    "eca_nfnet_l2": Release("eca_nfnet_l2.ra3_in1k", 84.7, _TIMM_NOTES, 384, 1.0),
    "timm_nf_resnet50": Release("nf_resnet50.ra2_in1k", 80.68, _TIMM_NOTES, 288, 0.94),
    "timm_nf_regnet_b1": Release("nf_regnet_b1.ra2_in1k", 79.3, _TIMM_NOTES, 288, 0.9),
    "test_nfnet": Release("test_nfnet.r160_in1k", None, "a tiny model for tests", 160, 0.95,
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}

# timm's architecture names → normfree's, where they differ (config.json's "architecture")
TIMM_ARCHITECTURES = {**{f"dm_nfnet_f{n}": f"nfnet_f{n}" for n in range(7)},
                      "nf_resnet50": "timm_nf_resnet50", "nf_regnet_b1": "timm_nf_regnet_b1"}


def timm_preprocessing(size, crop_pct, crop_mode="center", mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, interpolation="bicubic", in_chans=3):
    """timm's evaluation: resize to floor(size / crop_pct) (the shorter side, or both sides for
    "squash"), centre crop `size`."""
    return {"resize": math.floor(size / crop_pct), "crop": size, "crop_pct": crop_pct,
            "resize_mode": "squash" if crop_mode == "squash" else "shorter",
            "interpolation": interpolation, "mean": list(mean), "std": list(std),
            "in_chans": in_chans}


def release_preprocessing(release):
    return timm_preprocessing(release.test_size, release.crop_pct, release.crop_mode,
                              release.mean, release.std)


def preprocessing_from_timm_config(config):
    """The evaluation preprocessing of a timm `config.json` (its `pretrained_cfg`): the test
    size and crop where given, else the train ones."""
    cfg = config.get("pretrained_cfg", config)
    size = (cfg.get("test_input_size") or cfg["input_size"])[-1]
    crop_pct = cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875
    return timm_preprocessing(size, crop_pct, cfg.get("crop_mode", "center"),
                              cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                              cfg.get("interpolation", "bicubic"))


def model_of_timm_config(config):
    """The normfree model name of a timm `config.json`'s architecture (None if absent)."""
    architecture = config.get("architecture")
    return TIMM_ARCHITECTURES.get(architecture, architecture) if architecture else None
