"""normfree.data.mixing against DeepMind's `cutmix_padding`, `my_mixup_cutmix` and
`_augment_image` clip-and-cast (fixtures written by scripts/make_reference_fixtures.py), and the
pairing and per-example draws of `mix_batch`."""

from pathlib import Path

import numpy as np
import pytest
import torch

from normfree.data.mixing import (MixedBatch, box_masks, cutmix_box, mix, mix_batch,
                                  mix_then_augment, sample_beta, to_uint8)
from normfree.data.randaugment import RandAugment
from normfree.errors import ConfigError

FIXTURE = Path(__file__).parents[2] / "fixtures" / "reference" / "mixing.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as f:
        return {key: f[key] for key in f.files}


def test_cutmix_boxes_match_reference(reference):
    """The reference's mask for pinned centres and uniform draws, including a box clipped at
    the corner and one shrunk to nothing (u → 1)."""
    for (height, width, y, x, uniform), expected in zip(reference["cutmix_cases"],
                                                        reference["cutmix_masks"]):
        height, width = int(height), int(width)
        box = cutmix_box(height, width, torch.tensor([int(y)]), torch.tensor([int(x)]),
                         torch.tensor([uniform], dtype=torch.float32))
        mask = box_masks(box, height, width)[0].numpy()
        assert (mask == expected[:height, :width]).all(), (height, width, y, x, uniform)


def test_mixing_matches_reference_batch(reference):
    """`my_mixup_cutmix` on 8 sources: the reference uses the λ of quarter 1 and the masks of
    quarter 3, which `mix` takes directly."""
    images = torch.from_numpy(reference["batch_images"]).permute(0, 3, 1, 2)
    mixed = mix(images, torch.from_numpy(reference["batch_labels"]).long(),
                torch.from_numpy(reference["batch_mixup_ratio"][:2]),
                torch.from_numpy(reference["batch_mask"][4:6, ..., 0]))
    assert torch.equal(mixed.images.permute(0, 2, 3, 1),
                       torch.from_numpy(reference["mixed_images"]))
    assert mixed.labels.tolist() == reference["mixed_labels"].tolist()
    assert mixed.mix_labels.tolist() == reference["mixed_mix_labels"].tolist()
    assert torch.equal(mixed.ratio, torch.from_numpy(reference["mixed_ratio"]))


def test_clip_and_cast_matches_reference(reference):
    """Clipped to [0, 255] and truncated, not rounded."""
    ours = to_uint8(torch.from_numpy(reference["cast_in"]))
    assert ours.dtype == torch.uint8
    assert torch.equal(ours.float(), torch.from_numpy(reference["cast_out"]))
    assert to_uint8(torch.tensor([-3.0, 0.99, 254.7, 300.0])).tolist() == [0, 0, 254, 255]


def sources(count, height=10, width=12):
    """Source i is the constant image 1000 · (i + 1) with label i: every mixed pixel shows
    which two sources made it."""
    values = 1000.0 * torch.arange(1, count + 1)
    return values[:, None, None, None].expand(count, 3, height, width).clone(), torch.arange(count)


def test_pairing_quarters_and_ratios():
    """Mixed i < B/2: MixUp of sources i and B/2 + i with weight `ratio`; mixed B/2 + i:
    CutMix of sources B + i (inside the box) and 3B/2 + i, `ratio` its pixel share."""
    images, labels = sources(16)
    batch = mix_batch(images, labels, torch.Generator().manual_seed(0))
    assert batch.images.shape == (8, 3, 10, 12) and batch.images.dtype == torch.float32
    assert batch.labels.tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert batch.mix_labels.tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    for i in range(4):
        lam = batch.ratio[i]
        expected = lam * 1000 * (i + 1) + (1 - lam) * 1000 * (i + 5)
        assert torch.allclose(batch.images[i], expected.expand(3, 10, 12), rtol=1e-6)
    for i in range(4, 8):
        pixels = batch.images[i]
        first, second = 1000.0 * (i + 5), 1000.0 * (i + 9)
        assert ((pixels == first) | (pixels == second)).all()
        assert (pixels == first).float().mean() == pytest.approx(batch.ratio[i].item())


def test_draws_are_per_example():
    """Each mixed image has its own λ and its own box."""
    images, labels = sources(128, 16, 16)
    batch = mix_batch(images, labels, torch.Generator().manual_seed(1))
    mixup_ratio, cutmix_ratio = batch.ratio[:32], batch.ratio[32:]
    assert len(set(mixup_ratio.tolist())) == 32
    assert len(set(cutmix_ratio.tolist())) > 16
    cutmix_masks = batch.images[32:, 0] == 1000.0 * torch.arange(65, 97)[:, None, None]
    assert len({tuple(mask.flatten().tolist()) for mask in cutmix_masks}) == 32


def test_targets_are_the_ratio_split_one_hots():
    images, labels = sources(8)
    batch = mix_batch(images, labels, torch.Generator().manual_seed(2))
    targets = batch.targets(10)
    assert targets.shape == (4, 10)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    rows = torch.arange(4)
    assert torch.allclose(targets[rows, batch.labels], batch.ratio)
    assert torch.allclose(targets[rows, batch.mix_labels], 1 - batch.ratio)


def test_same_labels_give_a_one_hot_target():
    batch = MixedBatch(torch.zeros(1), torch.tensor([3]), torch.tensor([3]), torch.tensor([0.3]))
    assert batch.targets(5).tolist() == [[0, 0, 0, 1, 0]]


def test_mixup_ratio_is_beta_02():
    """Beta(0.2, 0.2): mean 1/2, variance 1 / (4 (2α + 1)) = 0.1786, U-shaped."""
    draws = sample_beta(40000, 0.2, torch.Generator().manual_seed(3))
    assert abs(draws.mean().item() - 0.5) < 0.01
    assert abs(draws.var().item() - 1 / (4 * 1.4)) < 0.005
    assert ((draws < 0.1) | (draws > 0.9)).float().mean() > 0.5


def test_mix_then_augment_runs_randaugment_on_clipped_uint8():
    """The reference's order: mix, clip and truncate, then RandAugment per mixed image."""
    generator = torch.Generator().manual_seed(4)
    images = torch.empty(8, 3, 12, 12).uniform_(-50, 300, generator=generator)
    labels = torch.arange(8)
    seen = []

    def identity(image, generator):
        seen.append(image)
        return image

    state = generator.get_state()
    batch = mix_then_augment(images, labels, identity, generator)
    generator.set_state(state)
    mixed = mix_batch(images, labels, generator)
    assert len(seen) == 4 and all(image.dtype == torch.uint8 for image in seen)
    assert torch.equal(batch.images, to_uint8(mixed.images))
    assert torch.equal(batch.ratio, mixed.ratio)
    augmented = mix_then_augment(images, labels, RandAugment(2, 10), generator)
    assert augmented.images.dtype == torch.uint8 and augmented.images.shape == (4, 3, 12, 12)


@pytest.mark.parametrize("count", (0, 6, 9))
def test_source_count_must_be_a_multiple_of_four(count):
    with pytest.raises(ConfigError, match=f"multiple of 4 source images.*got {count} images"):
        mix_batch(torch.zeros(count, 3, 4, 4), torch.zeros(count, dtype=torch.long))


def test_alpha_must_be_positive():
    with pytest.raises(ConfigError, match="alpha must be > 0, got 0"):
        mix_batch(torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.long), alpha=0)
