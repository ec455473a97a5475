"""`DataSpec`: what `make_data` reads, and nothing of training (docs/architecture.md §14).

Its field names are the settings' names; errors of the data floor name those fields
(`NormfreeError.fields`), and the command line shows them as its flags. Plain Python, without
torch.
"""

from dataclasses import dataclass, field
from typing import Optional

# Field metadata of a setting that changes which images a run sees or what it computes, not
# how long its steps, validations or start-up take (the training floor's speed records
# ignore such settings).
UNTIMED = {"timed": False}


@dataclass(frozen=True)
class AugmentSpec:
    """The training augmentation, mixing included: the reference pipeline mixes in the loader,
    per image; the torchvision pipeline's MixUp/CutMix is applied to whole batches on the
    device, by a mixer built from this spec and handed to the training step."""

    pipeline: str  # data.PIPELINES
    crop_padding: int
    flip: bool
    randaugment: Optional[tuple]  # (layers, magnitude)
    random_erasing: float
    mixup_alpha: float
    cutmix_alpha: float


@dataclass(frozen=True)
class DataSpec:
    """Which images, how they are split, batched, loaded and augmented."""

    dataset: str  # fashion-mnist | folder | synthetic
    data_dir: Optional[str]
    val_size: int  # training images held out for model selection (without a val/ folder)
    image_size: Optional[int]  # folder and synthetic data; resolved before `make_data`
    in_chans: int  # of synthetic images
    synthetic_size: int
    classes: Optional[tuple]  # class indices kept, relabelled 0, 1, ... in this order
    train_per_class: Optional[int]
    bad_images: str  # skip | stop
    test_size: Optional[int]  # folder data's evaluation crop
    batch_size: int  # the global batch
    eval_batch_size: int
    workers: Optional[int]  # image-decoding processes for folder data
    # the shuffled order, train_per_class's draw and synthetic images depend on it
    seed: int = field(metadata=UNTIMED)
    augmentation: AugmentSpec
