"""Random crop, horizontal flip and random erasing for a whole uint8 batch at once.

The same distribution as torchvision v2's `RandomCrop(size, padding)`, `RandomHorizontalFlip()`
and `RandomErasing(p, value=0)` applied image by image (`small_image_transform` without
RandAugment), but each image's random parameters are drawn as tensors from a caller's
`torch.Generator` and applied with a few tensor ops over the whole batch: image by image, it was
the largest cost outside the convolutions that the training step's profile showed
(docs/benchmarks.md, "The default step on the slower machine").

Drawing and applying are separate steps so that data-parallel processes can draw the parameters
of the whole global batch and each apply only its own rows: the augmentation then does not
depend on the number of processes.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

# torchvision's RandomErasing defaults: the rectangle's share of the image area and its
# height/width ratio (drawn log-uniformly), and how many draws may try to fit it in the image
ERASE_SCALE = (0.02, 0.33)
ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))
ERASE_ATTEMPTS = 10


@dataclass(frozen=True)
class AugmentDraw:
    """One batch's random parameters, a row per image: the crop window's corner in the padded
    image, whether the image is mirrored, and the erased rectangle (height 0 where nothing is
    erased)."""

    crop_top: torch.Tensor
    crop_left: torch.Tensor
    flipped: torch.Tensor
    erase_top: torch.Tensor
    erase_left: torch.Tensor
    erase_height: torch.Tensor
    erase_width: torch.Tensor

    def rows(self, select):
        """The draw for the images `select` (a function of one tensor) keeps."""
        return AugmentDraw(**{f.name: select(getattr(self, f.name)) for f in fields(self)})


class BatchAugment:
    """Crop after zero-padding by `crop_padding` px, mirror with probability 0.5 if `flip`,
    erase a rectangle with probability `random_erasing`: uint8 (N, C, H, W) in and out."""

    def __init__(self, crop_padding, flip, random_erasing):
        self.crop_padding, self.flip, self.random_erasing = crop_padding, flip, random_erasing

    def draw(self, count, height, width, generator):
        """Parameters for `count` images of `height` × `width`, on `generator`'s device."""
        offsets = 2 * self.crop_padding + 1
        device = generator.device
        crop_top, crop_left = torch.randint(offsets, (2, count), generator=generator,
                                            device=device)
        flip_probability = 0.5 if self.flip else 0.0
        flipped = torch.rand(count, generator=generator, device=device) < flip_probability
        return AugmentDraw(crop_top, crop_left, flipped,
                           *draw_erasing(count, height, width, self.random_erasing, generator))

    def __call__(self, images, draw):
        images = crop_and_flip(images, self.crop_padding, draw)
        return erase(images, draw)


def draw_erasing(count, height, width, probability, generator):
    """(top, left, height, width) of each image's erased rectangle, as torchvision draws it:
    with probability `probability`, up to `ERASE_ATTEMPTS` (area, aspect ratio) draws, the first
    whose rounded sides are both shorter than the image's is placed uniformly inside it; an image
    where none fits is left alone (an empty rectangle, like one not chosen for erasing)."""
    device = generator.device
    attempts = torch.empty(2, count, ERASE_ATTEMPTS, dtype=torch.float64, device=device)
    area = attempts[0].uniform_(*ERASE_SCALE, generator=generator) * (height * width)
    ratio = attempts[1].uniform_(*ERASE_LOG_RATIO, generator=generator).exp()
    # torch.round, like Python's round, takes halves to the even neighbour
    heights = (area * ratio).sqrt().round().long()
    widths = (area / ratio).sqrt().round().long()
    fits = (heights < height) & (widths < width)
    first = fits.byte().argmax(dim=1, keepdim=True)  # argmax gives the first of equal maxima
    chosen = torch.rand(count, generator=generator, device=device) < probability
    erased = chosen & fits.any(dim=1)
    rect_height = heights.gather(1, first).squeeze(1) * erased
    rect_width = widths.gather(1, first).squeeze(1) * erased
    # uniform over the (image − side + 1) positions; float64 keeps u · positions below positions
    corner = torch.rand(2, count, dtype=torch.float64, generator=generator, device=device)
    top = (corner[0] * (height - rect_height + 1)).long()
    left = (corner[1] * (width - rect_width + 1)).long()
    return top, left, rect_height, rect_width


def crop_and_flip(images, padding, draw):
    """Each image's window of its own size at (crop_top, crop_left) in the image zero-padded by
    `padding`, read right to left where `flipped`: one gather for the whole batch, by flat
    pixel numbers (`take`: faster here than indexing with four index tensors, docs/benchmarks.md,
    "Gathering the crops")."""
    count, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4)  # fill 0, as RandomCrop(padding=...) pads
    padded_height, padded_width = padded.shape[-2:]
    rows = draw.crop_top[:, None] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    columns = torch.where(draw.flipped[:, None], columns.flip(0), columns)
    columns = columns + draw.crop_left[:, None]
    planes = torch.arange(count * channels, device=device).view(count, channels, 1, 1)
    pixels = (planes * padded_height + rows[:, None, :, None]) * padded_width
    return padded.take(pixels + columns[:, None, None, :])


def erase(images, draw):
    """Zero each image's rectangle in all channels."""
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device) - draw.erase_top[:, None]
    columns = torch.arange(width, device=images.device) - draw.erase_left[:, None]
    in_rows = (rows >= 0) & (rows < draw.erase_height[:, None])
    in_columns = (columns >= 0) & (columns < draw.erase_width[:, None])
    inside = in_rows[:, :, None] & in_columns[:, None, :]
    return images.masked_fill(inside[:, None], 0)
