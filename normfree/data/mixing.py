"""The reference's MixUp + CutMix, per example (DeepMind's `nfnets/dataset.py`;
docs/architecture.md §11.1).

A batch of B mixed images is made from 2B source images in four quarters of B/2: mixed image i
< B/2 is MixUp of sources i (first quarter) and B/2 + i (second), λ · first + (1 − λ) · second
with its own λ ~ Beta(α, α); mixed image B/2 + i is CutMix of sources B + i (third quarter) and
3B/2 + i (fourth): the first inside its own box (`cutmix_box`), the second outside, with the
box's share of the image as λ. The target is λ · one-hot(first label) + (1 − λ) ·
one-hot(second label); label smoothing comes later, in the loss. The reference then clips each
mixed image to [0, 255], truncates it to uint8 and applies RandAugment (`mix_then_augment`).

Differences from the reference implementation: the random numbers (a `torch.Generator`); the
reference draws a λ and a box for every source image and uses a quarter of each, here only the
used ones are drawn (the same distribution).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

MIXUP_ALPHA = 0.2  # the reference's default, which its NFNet runs keep


@dataclass(frozen=True)
class MixedBatch:
    """B mixed images with, per image, the label of its first and second source and the first
    one's share `ratio` (λ): the reference's `images`, `labels`, `mix_labels`, `ratio`."""

    images: torch.Tensor
    labels: torch.Tensor
    mix_labels: torch.Tensor
    ratio: torch.Tensor

    def targets(self, num_classes):
        """(B, num_classes) float32 soft labels; each row sums to 1."""
        first = F.one_hot(self.labels, num_classes).float()
        second = F.one_hot(self.mix_labels, num_classes).float()
        ratio = self.ratio[:, None].float()
        return ratio * first + (1.0 - ratio) * second


def cutmix_box(height, width, center_y, center_x, uniform):
    """(top, left, bottom, right) of the reference's `cutmix_padding` box: sides
    trunc(sqrt(1 − u) · size), halved with floor division, laid either side of the centre and
    clipped to the image (so its sides are even before clipping). Int64 tensors of any shape
    in, float32 arithmetic as TensorFlow's."""
    side_ratio = torch.sqrt(1.0 - uniform.float())
    half_height = (side_ratio * height).long() // 2
    half_width = (side_ratio * width).long() // 2
    top = (center_y - half_height).clamp(0, height)
    bottom = (center_y + half_height).clamp(0, height)
    left = (center_x - half_width).clamp(0, width)
    right = (center_x + half_width).clamp(0, width)
    return top, left, bottom, right


def box_masks(boxes, height, width):
    """(N, H, W) float32: 1 inside each (top, left, bottom, right) box (bottom/right exclusive),
    0 outside."""
    top, left, bottom, right = (edge[:, None] for edge in boxes)
    rows = torch.arange(height, device=top.device)
    columns = torch.arange(width, device=top.device)
    in_rows = (rows >= top) & (rows < bottom)
    in_columns = (columns >= left) & (columns < right)
    return (in_rows[:, :, None] & in_columns[:, None, :]).float()


def sample_beta(count, alpha, generator=None, device=None):
    """`count` draws of Beta(alpha, alpha) from `generator`: torch.distributions.Beta has no
    generator argument, so this calls the Dirichlet sampler it uses inside."""
    concentration = torch.full((count, 2), float(alpha), dtype=torch.float64, device=device)
    return torch._sample_dirichlet(concentration, generator=generator)[:, 0].float()


def draw_mixing(count, height, width, generator=None, alpha=MIXUP_ALPHA):
    """For `count` MixUp and `count` CutMix images: MixUp's λ (count,) and CutMix's box masks
    (count, H, W), drawn from `generator` on its device."""
    if alpha <= 0:
        raise ConfigError(f"MixUp's alpha must be > 0, got {alpha!r}")
    device = generator.device if generator is not None else torch.device("cpu")
    mixup_ratio = sample_beta(count, alpha, generator, device)
    center_y = torch.randint(height, (count,), generator=generator, device=device)
    center_x = torch.randint(width, (count,), generator=generator, device=device)
    uniform = torch.rand(count, generator=generator, device=device)
    boxes = cutmix_box(height, width, center_y, center_x, uniform)
    return mixup_ratio, box_masks(boxes, height, width)


def mix(images, labels, mixup_ratio, masks):
    """(2B, C, H, W) float sources, (2B,) labels, B/2 λs and B/2 (H, W) masks → `MixedBatch`
    of B float32 images: MixUp of quarters 1 and 2, then CutMix of quarters 3 and 4."""
    quarter = images.shape[0] // 4
    first, second, third, fourth = images.float().split(quarter)
    weight = mixup_ratio.to(images.device)[:, None, None, None]
    masks = masks.to(images.device)[:, None]
    mixup = weight * first + (1.0 - weight) * second
    cutmix = masks * third + (1.0 - masks) * fourth
    first_labels, second_labels, third_labels, fourth_labels = labels.split(quarter)
    return MixedBatch(images=torch.cat([mixup, cutmix]),
                      labels=torch.cat([first_labels, third_labels]),
                      mix_labels=torch.cat([second_labels, fourth_labels]),
                      ratio=torch.cat([weight.flatten(), masks.mean(dim=(1, 2, 3))]))


def mix_batch(images, labels, generator=None, alpha=MIXUP_ALPHA):
    """(2B, C, H, W) float source images and their (2B,) integer labels → `MixedBatch` of B
    float32 images, with a λ and a box drawn per mixed image from `generator`."""
    count = images.shape[0]
    if count % 4 or count == 0 or labels.shape != (count,):
        raise ConfigError(f"MixUp + CutMix takes a positive multiple of 4 source images (2 per "
                          f"mixed image, half MixUp, half CutMix) and a label each, got "
                          f"{count} images and labels of shape {tuple(labels.shape)}")
    mixup_ratio, masks = draw_mixing(count // 4, *images.shape[-2:], generator, alpha)
    return mix(images, labels, mixup_ratio, masks)


def to_uint8(images):
    """Float images clipped to [0, 255] and truncated to uint8: the reference's
    `tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)` before RandAugment."""
    return images.clamp(0.0, 255.0).to(torch.uint8)


def mix_then_augment(images, labels, randaugment, generator=None, alpha=MIXUP_ALPHA):
    """The reference's order: mix 2B float sources into B images, clip and truncate them to
    uint8, then RandAugment each one (`randaugment(image, generator)`, e.g.
    `normfree.data.randaugment.RandAugment`). `MixedBatch` with uint8 images."""
    mixed = mix_batch(images, labels, generator, alpha)
    augmented = torch.stack([randaugment(image, generator) for image in to_uint8(mixed.images)])
    return MixedBatch(augmented, mixed.labels, mixed.mix_labels, mixed.ratio)
