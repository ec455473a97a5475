"""The reference pipeline as the loader runs it (`--pipeline reference`): 2B sources a batch of
B, mixing then RandAugment in the workers, the reference's crops for training, evaluation and
DeepMind's released weights (against TensorFlow's output in the fixtures)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normfree.data.datasets import make_data
from normfree.data.folders import FolderBatches
from normfree.data.reference_pipeline import MixAndAugment, eval_transform
from normfree.data.spec import DataSpec
from normfree.errors import ConfigError
from normfree.training.config import preset
from normfree.training.logs import EpochTally
from normfree.training.optim import StepResult
from normfree.training.specs import spec_from
from normfree.weights.pretrained import Pretrained, reference_preprocessing

FIXTURES = Path(__file__).parents[2] / "fixtures" / "reference"


class Indexed(torch.utils.data.Dataset):
    """Sample i is a 1×1 image of value i with label i % 10."""

    def __init__(self, size):
        self.samples = [(None, i % 10) for i in range(size)]
        self.transform = None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return torch.full((1, 1, 1), float(index)), index % 10


def source_numbers(batches):
    return [images.flatten().long().tolist() for images, _ in batches]


def test_mixing_batches_read_two_sources_per_image_each_image_twice_a_pass():
    batches = FolderBatches(Indexed(24), 4, shuffle=True, drop_last=True, workers=0, sources=2)
    passes = source_numbers(batches)
    assert len(passes) == len(batches) == 6 and all(len(b) == 8 for b in passes)
    seen = sorted(i for batch in passes for i in batch)
    assert seen == sorted(list(range(24)) * 2)  # two orders, each image once in each
    assert sorted(sum(passes[:3], [])) == list(range(24))
    assert source_numbers(batches) != passes  # a new order each pass
    assert source_numbers(FolderBatches(Indexed(24), 4, workers=0)) == [
        list(range(i, i + 4)) for i in range(0, 24, 4)]


def test_each_process_gets_its_consecutive_share_of_the_sources():
    whole = FolderBatches(Indexed(32), 8, shuffle=True, drop_last=True, workers=0, sources=2)
    parts = []
    for rank in range(2):
        part = FolderBatches(Indexed(32), 8, shuffle=True, drop_last=True, workers=0, sources=2)
        part.shard(rank, 2)
        parts.append(source_numbers(part))
    for full, first, second in zip(source_numbers(whole), *parts):
        assert full == first + second and len(first) == 8


def test_an_odd_share_per_process_is_refused_when_mixing():
    batches = FolderBatches(Indexed(32), 6, drop_last=True, workers=0, sources=2)
    with pytest.raises(ConfigError, match="even number per process"):
        batches.shard(0, 2)  # 3 mixed images each
    FolderBatches(Indexed(32), 6, drop_last=True, workers=0).shard(0, 2)  # unmixed: fine


def constant_sources(count, size=8):
    """`count` float images of value 10·k (k the source number) with label k."""
    images = torch.arange(count, dtype=torch.float32).mul(10)[:, None, None, None]
    return images.expand(count, 3, size, size).clone(), torch.arange(count)


def test_mix_and_augment_pairs_quarters_with_per_image_draws():
    images, labels = constant_sources(16)
    finish = MixAndAugment(lambda samples: (images, labels, []), num_classes=16)
    torch.manual_seed(0)
    mixed, targets, _ = finish(None)
    assert mixed.shape == (8, 3, 8, 8) and mixed.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(8))
    for i in range(4):  # MixUp: source i with source 4 + i, its own λ
        ratio = targets[i, i]
        assert torch.allclose(targets[i, 4 + i], 1 - ratio)
        assert torch.allclose(mixed[i], ratio * 10 * i + (1 - ratio) * 10 * (4 + i))
    for i in range(4):  # CutMix: source 8 + i inside the box, 12 + i outside
        values = set(mixed[4 + i].unique().tolist())
        assert values <= {10.0 * (8 + i), 10.0 * (12 + i)}
        inside = (mixed[4 + i, 0] == 10.0 * (8 + i)).float().mean()
        assert torch.allclose(targets[4 + i, 8 + i], inside)
    assert len(set(targets[:4].max(1).values.tolist())) == 4  # a λ per image


def test_mix_and_augment_clips_to_uint8_before_randaugment_and_trims_to_quarters():
    images, labels = constant_sources(14)  # unreadable files left 14: 12 are mixed
    images[0] = 300.0  # out of range after mixing, as bicubic overshoot can be
    finish = MixAndAugment(lambda samples: (images, labels, ["bad.jpg"]), num_classes=14,
                           randaugment=(0, 5))
    mixed, targets, unreadable = finish(None)
    assert mixed.dtype == torch.uint8 and len(mixed) == len(targets) == 6
    assert unreadable == ["bad.jpg"]
    unmixed = MixAndAugment(lambda samples: (images, labels, []), randaugment=(0, 5))
    out, out_labels, _ = unmixed(None)
    assert out.dtype == torch.uint8 and out[0].max() == 255 and torch.equal(out_labels, labels)


def test_training_counts_soft_targets_by_their_largest_share():
    tally = EpochTally()
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    targets = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    tally.add(StepResult(torch.tensor(1.0), logits, None), targets)
    assert (tally.seen, tally.correct) == (3, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes of 8 photos (one greyscale, one CMYK), 2 of each in val/."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("folder")
    for split, count in (("train", 8), ("val", 2)):
        for c in range(3):
            (root / split / str(c)).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (rng.integers(30, 70), rng.integers(30, 70), 3))
                image = Image.fromarray(pixels.astype(np.uint8))
                image = image.convert("L" if i == 0 else "CMYK" if i == 1 else "RGB")
                image.save(root / split / str(c) / f"{i}.jpg")
    return root


def test_reference_folder_data_trains_on_mixed_augmented_batches(folder):
    cfg = preset("imagenet-f0", data_dir=str(folder), image_size=24, test_size=40,
                 batch_size=4, eval_batch_size=6, workers=0)
    data = make_data(spec_from(DataSpec, cfg))
    assert data.train.sources == 2 and len(data.train) == 24 // 4
    images, targets = next(iter(data.train))
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.uint8
    assert targets.shape == (4, 3) and torch.allclose(targets.sum(1), torch.ones(4))
    images, labels = next(iter(data.test))
    assert images.shape == (6, 3, 40, 40) and images.dtype == torch.float32
    assert data.test_is_val and data.test_size == 40
    path, _ = data.test.dataset.samples[0]
    assert torch.equal(images[0], eval_transform(40)(Image.open(path)))


def test_unmixed_reference_folder_data_keeps_float_images_and_labels(folder):
    cfg = preset("imagenet-f0", data_dir=str(folder), image_size=24, batch_size=4, workers=0,
                 mixup_alpha=0.0, cutmix_alpha=0.0, randaugment=None)
    images, labels = next(iter(make_data(spec_from(DataSpec, cfg)).train))
    assert images.dtype == torch.float32 and labels.dtype == torch.int64 and len(labels) == 4


@pytest.mark.parametrize("case", ("astronaut", "checker_small"))
def test_deepmind_weights_evaluate_with_the_reference_resize(case):
    """`predict`/`eval --weights` on DeepMind's files: TF's `resize_crop_32` output, within the
    issue's target (measured: equal to float32 precision)."""
    with np.load(FIXTURES / "crops.npz") as f:
        source, expected = f[f"eval_in_{case}"], f[f"eval_out_{case}"]
    weights = Pretrained(None, "nfnet_f0", "deepmind", (), reference_preprocessing(48), "haiku")
    ours = weights.transform()(Image.fromarray(source)).permute(1, 2, 0).numpy()
    difference = np.abs(ours - expected)
    assert difference.mean() <= 0.5 and (difference <= 1.5).mean() >= 0.99
    assert difference.max() <= 1e-3


@pytest.mark.parametrize("overrides, message", [
    (dict(randaugment=(4, 23)), "magnitude must be in \\[0, 22.5\\)"),
    (dict(pipeline="torchvision", randaugment=(2, 31)), "magnitude must be in \\[0, 31\\)"),
    (dict(image_size=224, test_size=192), "below the training crop"),
    (dict(cutmix_alpha=0.5), "--cutmix-alpha 1"),
    (dict(mixup_alpha=0.0), "MixUp and CutMix together"),
    (dict(random_erasing=0.25), "no random erasing"),
    (dict(dataset="synthetic"), "--dataset folder"),
])
def test_settings_the_pipeline_cannot_run_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preset("imagenet-f0", **overrides)
