"""Batched crop / flip / random erasing: the same distribution as torchvision's per-image
pipeline, drawn from the batch iterator's generator so that passes repeat and resume exactly."""

import math

import pytest
import torch
from torchvision.transforms import v2

from normfree.data.batch_augment import (ERASE_ATTEMPTS, ERASE_LOG_RATIO, ERASE_SCALE,
                                         BatchAugment)
from normfree.data.batches import TensorBatches
from normfree.data.datasets import train_augmentation
from normfree.data.spec import AugmentSpec
from normfree.training.config import preset
from normfree.training.specs import spec_from

SIZE = 28


def augmented(augment, images, seed=0):
    generator = torch.Generator().manual_seed(seed)
    draw = augment.draw(len(images), *images.shape[-2:], generator)
    return augment(images, draw), draw


def random_images(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (count, 1, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def white_images(count, height=SIZE, width=SIZE):
    return torch.full((count, 1, height, width), 255, dtype=torch.uint8)


def rectangle_of_zeros(image):
    """(top, left, height, width) of the zeros of an all-255 image after erasing; asserts they
    form one full rectangle."""
    rows, columns = torch.nonzero(image[0] == 0, as_tuple=True)
    top, left = int(rows.min()), int(columns.min())
    height, width = int(rows.max()) - top + 1, int(columns.max()) - left + 1
    assert len(rows) == height * width  # every pixel of the bounding box is erased
    return top, left, height, width


def test_output_is_uint8_of_the_input_shape_erased_in_every_channel():
    images = torch.randint(1, 256, (64, 3, SIZE, SIZE), dtype=torch.uint8)
    out, _ = augmented(BatchAugment(4, True, 0.5), images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    zeros = out == 0  # padding and erasing, the same in all channels
    assert zeros.any() and torch.equal(zeros, zeros[:, :1].expand_as(zeros))


@pytest.mark.parametrize("flip", [False, True])
def test_each_crop_is_a_window_of_the_zero_padded_image_at_a_uniform_offset(flip):
    images = random_images(1000)
    out, _ = augmented(BatchAugment(2, flip, 0.0), images)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    windows = torch.stack([padded[:, :, top:top + SIZE, left:left + SIZE]
                           for top in range(5) for left in range(5)], dim=1)  # (N, 25, ...)
    candidates = torch.cat([windows, windows.flip(-1)], dim=1)  # then their mirror images
    matches = (candidates == out[:, None]).flatten(2).all(dim=2)
    assert torch.equal(matches.sum(dim=1), torch.ones(1000, dtype=torch.long))
    match = matches.long().argmax(dim=1)
    assert (match >= 25).any() == flip
    counts = torch.bincount(match % 25, minlength=25)
    # 40 expected per offset, standard deviation ~6.2
    assert counts.min() >= 15 and counts.max() <= 65, counts


def test_half_the_images_are_mirrored():
    images = random_images(4000)
    out, draw = augmented(BatchAugment(0, True, 0.0), images)
    mirrored = (out == images.flip(-1)).flatten(1).all(dim=1)
    unchanged = (out == images).flatten(1).all(dim=1)
    assert torch.equal(mirrored, draw.flipped) and torch.equal(unchanged, ~draw.flipped)
    assert abs(mirrored.float().mean().item() - 0.5) < 0.04  # 5 standard deviations


def test_erased_rectangles_are_zero_inside_the_image_and_of_the_drawn_size():
    out, draw = augmented(BatchAugment(0, False, 1.0), white_images(2000))
    erased = (out == 0).flatten(1).any(dim=1)
    assert torch.equal(erased, draw.erase_height * draw.erase_width > 0)
    assert set(out.unique().tolist()) == {0, 255}
    for image, top, left, height, width in zip(out[erased], *(
            getattr(draw, "erase_" + side)[erased].tolist()
            for side in ("top", "left", "height", "width"))):
        assert rectangle_of_zeros(image) == (top, left, height, width)
        assert 0 <= top and top + height <= SIZE and 0 <= left and left + width <= SIZE
    # the sides are the real ones rounded to pixels: the real area and ratio were in range
    height, width = draw.erase_height[erased].double(), draw.erase_width[erased].double()
    area = SIZE * SIZE
    assert ((height - 0.5) * (width - 0.5) <= ERASE_SCALE[1] * area).all()
    assert ((height + 0.5) * (width + 0.5) >= ERASE_SCALE[0] * area).all()
    assert ((height - 0.5) / (width + 0.5) <= math.exp(ERASE_LOG_RATIO[1])).all()
    assert ((height + 0.5) / (width - 0.5) >= math.exp(ERASE_LOG_RATIO[0])).all()
    within = (height * width / area >= ERASE_SCALE[0]) & (height * width / area <= ERASE_SCALE[1])
    assert within.float().mean() > 0.95


def fit_probability(height, width):
    """The chance that one of the attempts fits a `height` × `width` image, estimated from
    200,000 draws of the sides as torchvision computes them."""
    generator = torch.Generator().manual_seed(1)
    area = torch.empty(200_000, dtype=torch.float64).uniform_(*ERASE_SCALE, generator=generator)
    ratio = torch.empty(200_000, dtype=torch.float64).uniform_(*ERASE_LOG_RATIO,
                                                                 generator=generator).exp()
    area = area * height * width
    fits = ((area * ratio).sqrt().round() < height) & ((area / ratio).sqrt().round() < width)
    return 1 - (1 - fits.double().mean().item()) ** ERASE_ATTEMPTS


@pytest.mark.parametrize("height, width", [(SIZE, SIZE), (2, 40)])
def test_images_are_erased_with_probability_p_times_the_fit_probability(height, width):
    """On 28 × 28 images some attempt practically always fits; on 2 × 40 strips in ~45 % of the
    images, where torchvision's per-image transform must leave as many images alone."""
    images = white_images(4000, height, width)
    out, _ = augmented(BatchAugment(0, False, 0.6), images)
    rate = (out == 0).flatten(1).any(dim=1).double().mean().item()
    assert abs(rate - 0.6 * fit_probability(height, width)) < 0.04  # 5 standard deviations
    torch.manual_seed(0)
    per_image = v2.RandomErasing(0.6, value=0)
    reference = torch.stack([per_image(image) for image in images])
    assert abs(rate - (reference == 0).flatten(1).any(dim=1).double().mean().item()) < 0.05


def rectangle_statistics(images):
    """Mean area fraction, mean log(height / width) and mean centre row of the erased
    rectangles of all-255 images."""
    sides = torch.tensor([rectangle_of_zeros(image) for image in images
                          if (image == 0).any()], dtype=torch.float64)
    top, height, width = sides[:, 0], sides[:, 2], sides[:, 3]
    return ((height * width).mean().item() / SIZE ** 2, (height / width).log().mean().item(),
            (top + height / 2).mean().item())


def test_erased_rectangles_are_distributed_like_torchvisions():
    count = 3000
    batched, _ = augmented(BatchAugment(0, False, 1.0), white_images(count))
    torch.manual_seed(0)
    per_image = v2.RandomErasing(1.0, value=0)
    reference = torch.stack([per_image(image) for image in white_images(count)])
    (area, log_ratio, centre), (ref_area, ref_log_ratio, ref_centre) = (
        rectangle_statistics(batched), rectangle_statistics(reference))
    # standard errors of the differences: ~0.0023 in area, ~0.016 in log ratio, ~0.11 rows
    assert abs(area - ref_area) < 0.012
    assert abs(log_ratio - ref_log_ratio) < 0.08
    assert abs(centre - ref_centre) < 0.55


def batches(seed):
    return TensorBatches(random_images(40, seed=5), torch.arange(40), 8, shuffle=True,
                         augment=BatchAugment(2, True, 0.5), seed=seed)


def all_equal(left, right):
    return len(left) == len(right) and all(
        torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(left, right))


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    first, again, other = list(batches(0)), list(batches(0)), list(batches(1))
    assert all_equal(first, again)
    assert not any(torch.equal(a, c) for (a, _), (c, _) in zip(first, other))


def test_a_pass_resumed_at_batch_k_equals_the_tail_of_a_full_pass():
    full = list(batches(0))
    for start in (1, 3):
        resumed = batches(0)
        assert all_equal(list(resumed.iterate(start)), full[start:])


def test_processes_apply_their_rows_of_the_global_batch_augmentation():
    whole = list(batches(0))
    shards = []
    for rank in range(2):
        shard = batches(0)
        shard.shard(rank, 2)
        shards.append(list(shard))
    for (images, labels), parts in zip(whole, zip(*shards)):
        assert torch.equal(images, torch.cat([part[0] for part in parts]))
        assert torch.equal(labels, torch.cat([part[1] for part in parts]))


@pytest.mark.parametrize("randaugment, kind", [(None, "augment"), ((2, 5), "transform")])
def test_randaugment_alone_keeps_the_per_image_pipeline(randaugment, kind):
    augmentation = spec_from(AugmentSpec, preset("fmnist", randaugment=randaugment))
    assert list(train_augmentation(augmentation, SIZE)) == [kind]
    off = preset("fmnist", crop_padding=0, flip=False, random_erasing=0.0)
    assert train_augmentation(spec_from(AugmentSpec, off), SIZE) == {}


@pytest.mark.cuda
def test_cuda_batches_are_augmented_on_the_device():
    images = random_images(16).cuda()
    augment = BatchAugment(2, True, 0.5)
    draw = augment.draw(16, SIZE, SIZE, torch.Generator("cuda").manual_seed(0))
    out = augment(images, draw)
    assert out.device == images.device and out.dtype == torch.uint8
