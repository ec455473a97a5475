"""DeepMind's input pipeline for image folders (`--pipeline reference`, the ImageNet presets;
docs/architecture.md §11.1), assembled from `reference_crops`, `mixing` and `randaugment`.

Training: each image is cropped, flipped and resized as the reference's `_preprocess_image`
does (`train_crop`: float32, unclamped). With mixing, a batch of B images is made from 2B such
images (`mix_batch`: MixUp on one half, CutMix on the other, a λ and a box per image); then each
image is clipped and truncated to uint8 and RandAugmented (the reference's TF RandAugment). All
of it runs in the loader's worker processes, on their own random streams, so the training
process receives finished batches: uint8 images (float32 without RandAugment) and, with mixing,
(B, classes) soft targets.

Evaluation: the whole image resized bicubically without antialiasing to (S+32)², its centre S²
(`eval_crop`), float32 and unclamped, as the reference feeds its model.
"""

import functools

import torch
from torchvision.transforms import v2

from .mixing import mix_batch, to_uint8
from .randaugment import RandAugment
from .reference_crops import CROP_PADDING, eval_crop, train_crop

SOURCES_PER_MIXED_IMAGE = 2  # the reference mixes 2B images into a batch of B


def _decoded(crop):
    """PIL image (greyscale, CMYK, palette, ... ) → RGB uint8 (3, H, W) → `crop`."""
    return v2.Compose([v2.RGB(), v2.PILToTensor(), crop])


def train_transform(size, flip=True):
    """`train_crop` (flipped with probability 1/2 when `flip`) on the worker's random stream;
    a partial, not a closure, so the loader can pickle it for its workers."""
    return _decoded(functools.partial(train_crop, size=size, flip=flip))


def eval_transform(size, padding=CROP_PADDING):
    return _decoded(functools.partial(eval_crop, size=size, padding=padding))


class MixAndAugment:
    """A batch's finishing steps, run by the loader (its `collate_fn` after `collate`, which
    turns the samples into (images, labels, unreadable paths)): with `num_classes`, mix pairs of
    images into half as many (`mix_batch`; targets become (B, num_classes) soft labels), then,
    with `randaugment` (layers, magnitude), clip to uint8 and RandAugment each image.

    Mixing takes a multiple of 4 images; when unreadable files left fewer, the remainder is
    dropped with them (the batch shrinks by whole mixed pairs)."""

    def __init__(self, collate, num_classes=None, randaugment=None):
        self.collate, self.num_classes = collate, num_classes
        self.randaugment = RandAugment(*randaugment) if randaugment else None

    def __call__(self, samples):
        images, labels, unreadable = self.collate(samples)
        if images is None:
            return images, labels, unreadable
        if self.num_classes:
            usable = len(labels) - len(labels) % 4
            if not usable:
                return None, None, unreadable
            mixed = mix_batch(images[:usable], labels[:usable])
            images, labels = mixed.images, mixed.targets(self.num_classes)
        if self.randaugment is not None:
            images = torch.stack([self.randaugment(image) for image in to_uint8(images)])
        return images, labels, unreadable
