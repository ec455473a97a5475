"""The reference's crops and resizes (DeepMind's `nfnets/dataset.py`; docs/architecture.md §11.1).

Evaluation (`eval_crop`, the reference's `resize_crop_32`): the whole image resized to
(S + 32)² — squashed, the aspect ratio is not kept — then the centre S² crop. Training
(`train_crop`): a window drawn as TensorFlow's `sample_distorted_bounding_box` draws it (area
0.08–1 of the image, aspect ratio 3/4–4/3, at least 10 % of the image covered, 10 attempts),
the centre crop of `center_crop_window` instead whenever that window is the whole image, a
horizontal flip with probability 1/2, then a resize to S². Both resizes are TensorFlow 2's
`tf.image.resize(..., BICUBIC)`: Keys' cubic with a = −0.5 (PyTorch's bicubic uses −0.75),
half-pixel centres, no antialiasing, taps outside the image dropped and the rest renormalised;
float32 output, not clamped to [0, 255].

Differences from the reference implementation: the random numbers (a `torch.Generator`, not
TensorFlow's Philox stream), so windows agree in distribution only; images arrive decoded, as
uint8 (C, H, W) tensors, where the reference decodes only the crop window of the JPEG. The
resizes equal TensorFlow's to float32 precision (tests/unit/data/test_reference_crops.py).
"""

import functools

import numpy as np
import torch

from ..errors import InputError

# tf.image.resize's bicubic kernel: Keys' a, and the 1/1024 steps in which TensorFlow tabulates
# its weights
KEYS_A = -0.5
TABLE_SIZE = 1024
CROP_PADDING = 32  # px the reference adds to the test size before its centre crop
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
MIN_COVERED = 0.1
ATTEMPTS = 10


def keys_table():
    """(TABLE_SIZE + 1, 2) float32: the weights of the near taps (distance d = i / TABLE_SIZE)
    and the far taps (1 + d), computed in float64 and stored in float32 as TensorFlow does."""
    d = torch.arange(TABLE_SIZE + 1, dtype=torch.float64) / TABLE_SIZE
    a = KEYS_A
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far_d = d + 1
    far = ((a * far_d - 5 * a) * far_d + 8 * a) * far_d - 4 * a
    return torch.stack([near, far], dim=1).float()


@functools.lru_cache(maxsize=4096)
def resize_taps(in_size, out_size):
    """TensorFlow's half-pixel bicubic resampling along one axis: output i reads input
    position (i + 0.5) · in/out − 0.5 (float32) from the 4 pixels around it. Returns their
    (out_size, 4) indices, clamped into the image, and float32 weights, zero for taps outside
    the image and the rest renormalised to sum to 1."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(position)
    offset = torch.from_numpy(np.rint((position - base) * np.float32(TABLE_SIZE)).astype(np.int64))
    table = keys_table()
    # taps at base − 1, base, base + 1, base + 2
    weights = torch.stack([table[offset, 1], table[offset, 0],
                           table[TABLE_SIZE - offset, 0], table[TABLE_SIZE - offset, 1]], dim=1)
    taps = torch.from_numpy(base.astype(np.int64))[:, None] + torch.arange(-1, 3)
    weights = weights * ((taps >= 0) & (taps < in_size))
    total = weights[:, 0] + weights[:, 1] + weights[:, 2] + weights[:, 3]
    return taps.clamp(0, in_size - 1), weights * (1.0 / total)[:, None]


def bicubic_resize(image, height, width):
    """(..., H, W) image (uint8 or float) → float32 (..., height, width), unclamped:
    tf.image.resize(image, (height, width), "bicubic") with its default antialias=False.
    The vertical pass first, then the horizontal, each a sum of 4 weighted taps in
    TensorFlow's order."""
    rows = _resample_rows(image.float(), *resize_taps(image.shape[-2], height))
    columns = _resample_rows(rows.transpose(-1, -2), *resize_taps(image.shape[-1], width))
    return columns.transpose(-1, -2).contiguous()


def _resample_rows(image, taps, weights):
    """Each output row the weighted sum of its 4 input rows, added up in tap order: one gather
    for all taps (twice as fast as four, docs/benchmarks.md), the columns resampled as rows of
    the transposed image for the same reason."""
    taps, weights = taps.to(image.device), weights.to(image.device)
    gathered = image.index_select(-2, taps.flatten()).unflatten(-2, taps.shape)
    total = gathered[..., 0, :] * weights[:, 0, None]
    for k in range(1, 4):
        total = total + gathered[..., k, :] * weights[:, k, None]
    return total


def center_crop_window(height, width, size, padding=CROP_PADDING):
    """(top, left, crop height, crop width): the centre crop whose resize to `size`² would leave
    at least `padding` px of margin on the shorter side (the reference's
    `_decode_and_center_crop`, float32 like TensorFlow)."""
    scale = min(np.float32(height) / np.float32(size + padding),
                np.float32(width) / np.float32(size + padding))
    side = int(scale * np.float32(size))
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def sample_window(height, width, generator=None):
    """(top, left, crop height, crop width) as TensorFlow's `sample_distorted_bounding_box`
    draws it with the reference's settings, or None when every attempt failed.

    Each attempt draws an aspect ratio r (width / height) uniformly, a height uniformly
    between the rounded sides of the smallest and largest allowed areas, width round(r·h),
    nudges the height by one if rounding left the area outside its range, and places the window
    uniformly (the last position is never drawn: TensorFlow draws the offset below H − h).
    float32 arithmetic and half-to-even rounding as in the kernel."""
    draws = torch.rand(ATTEMPTS, 4, dtype=torch.float64, generator=generator).tolist()
    for aspect_draw, height_draw, top_draw, left_draw in draws:
        aspect = (np.float32(aspect_draw) * np.float32(ASPECT_RANGE[1] - ASPECT_RANGE[0])
                  + np.float32(ASPECT_RANGE[0]))
        sides = _window_sides(height, width, aspect, height_draw)
        if sides is None:
            continue
        crop_height, crop_width = sides
        covered = np.float32(crop_height * crop_width) / np.float32(height * width)
        if covered < np.float32(MIN_COVERED):
            continue
        top = int(top_draw * (height - crop_height)) if crop_height < height else 0
        left = int(left_draw * (width - crop_width)) if crop_width < width else 0
        return top, left, crop_height, crop_width
    return None


def _window_sides(height, width, aspect, draw):
    """(crop height, crop width) for one attempt (TensorFlow's GenerateRandomCrop), or None."""
    min_area = np.float32(AREA_RANGE[0]) * np.float32(width) * np.float32(height)
    max_area = np.float32(AREA_RANGE[1]) * np.float32(width) * np.float32(height)
    crop_height = int(np.rint(np.sqrt(min_area / aspect)))
    max_height = int(np.rint(np.sqrt(max_area / aspect)))
    if np.rint(np.float32(max_height) * aspect) > width:
        # the tallest window whose rounded width still fits
        max_height = int((width + 0.5 - float(np.float32(1e-7))) / float(aspect))
        if np.rint(np.float32(max_height) * aspect) > width:
            max_height -= 1
    max_height = min(max_height, height)
    crop_height = min(crop_height, max_height)
    crop_height += int(draw * (max_height - crop_height + 1))
    crop_width = int(np.rint(np.float32(crop_height) * aspect))
    if crop_width * crop_height < min_area:
        crop_height += 1
        crop_width = int(np.rint(np.float32(crop_height) * aspect))
    if crop_width * crop_height > max_area:
        crop_height -= 1
        crop_width = int(np.rint(np.float32(crop_height) * aspect))
    area = crop_width * crop_height
    if (area < min_area or area > max_area or crop_width > width or crop_height > height
            or crop_width <= 0 or crop_height <= 0):
        return None
    return crop_height, crop_width


def train_window(height, width, size, generator=None):
    """The reference's `_decode_and_random_crop` window: a sampled one, or the centre crop
    when the sample is the whole image (all attempts failed, or one drew the whole image)."""
    window = sample_window(height, width, generator)
    if window is None or window[2:] == (height, width):
        return center_crop_window(height, width, size)
    return window


def train_crop(image, size, generator=None, flip=True):
    """uint8 (C, H, W) → float32 (C, size, size): the reference's training crop, flip and
    resize (`_preprocess_image` with is_training=True)."""
    check_image(image)
    top, left, crop_height, crop_width = train_window(*image.shape[-2:], size, generator)
    crop = image[..., top:top + crop_height, left:left + crop_width]
    if flip and torch.rand((), generator=generator) < 0.5:
        crop = crop.flip(-1)
    return bicubic_resize(crop, size, size)


def eval_crop(image, size, padding=CROP_PADDING):
    """uint8 (C, H, W) → float32 (C, size, size): the whole image resized to
    (size + padding)², then its centre crop (the reference's `resize_crop_32`)."""
    check_image(image)
    resized = bicubic_resize(image, size + padding, size + padding)
    start = (padding + 1) // 2
    return resized[..., start:start + size, start:start + size]


def check_image(image):
    if not (isinstance(image, torch.Tensor) and image.dim() == 3 and min(image.shape[-2:]) > 0):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"the reference crops take a (C, H, W) tensor, got {got}")
