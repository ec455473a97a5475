"""Image files on disk: ImageFolder trees and flat folders with a labels file.

Unreadable images never crash a worker: they come back as `None`, the collate function drops them
and reports their paths, and `FolderBatches` either skips them (listing this pass's in
`.skipped`, for the caller to report) or stops with an error naming the file, as `bad_images`
says.
"""

import codecs
import os
import re
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from ..errors import ConfigError, DataError
from .batches import Data, Sharded
from . import IMAGENET_MEAN, IMAGENET_STD
from . import reference_pipeline
from .reference_pipeline import SOURCES_PER_MIXED_IMAGE, MixAndAugment
from .transforms import folder_train_transform, image_transform

BAD_IMAGE_POLICIES = ("skip", "stop")


def open_image(path):
    """A PIL image, fully decoded; `DataError` naming the file when it cannot be."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


class ImageFiles(Dataset):
    """(path, label) samples → (uint8 tensor, label), or (None, path) for an unreadable file."""

    def __init__(self, samples, transform):
        self.samples, self.transform = list(samples), transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            return self.transform(open_image(path)), label
        except DataError:
            return None, str(path)


def collate_readable(items):
    """Stack the readable images; list the unreadable ones' paths."""
    good = [(image, label) for image, label in items if image is not None]
    bad = [path for image, path in items if image is None]
    if not good:
        return None, None, bad
    images, labels = zip(*good)
    return torch.stack(images), torch.tensor(labels), bad


class FolderBatches(Sharded):
    """Batches of (images, labels) from `ImageFiles`, with the `bad_images` policy applied.

    The shuffled order comes from `generator` (as for in-memory data), so a pass can restart
    at any batch; augmentation randomness lives in the loader's worker processes.
    """

    def __init__(self, dataset, batch_size, shuffle=False, drop_last=False, bad_images="skip",
                 workers=None, seed=0, collate=collate_readable, sources=1):
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got "
                              f"{bad_images!r}", fields=("bad_images",))
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        self.dataset, self.size, self.batch_size = dataset, len(dataset), batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        # `collate` makes a batch of `sources` images per batch image (2: mixed in pairs)
        self.collate, self.sources = collate, sources
        self.generator = torch.Generator().manual_seed(seed)
        self.indices = []  # the sampler: this pass's order (this process's part) from `start`
        self.loader = self._loader()
        self.bad_images = bad_images
        self.skipped = []

    @property
    def per_process_multiple(self):
        """What each process's share of a batch must be a multiple of: 2 when images are mixed
        in pairs (MixUp on one half of the pairs, CutMix on the other)."""
        return 2 if self.sources > 1 else 1

    def _loader(self):
        return DataLoader(self.dataset, self.batch_size * self.sources // self.world_size,
                          sampler=self.indices, drop_last=self.drop_last,
                          num_workers=self.workers, persistent_workers=self.workers > 0,
                          collate_fn=self.collate)

    def shard(self, rank, world_size):
        super().shard(rank, world_size)
        if (self.batch_size // world_size) % self.per_process_multiple:
            raise ConfigError(f"batch_size {self.batch_size} over {world_size} process(es) "
                              f"gives each {self.batch_size // world_size} images a step; mixing "
                              "as the reference does (MixUp on half the pairs, CutMix on the "
                              "other) needs an even number per process", fields=("batch_size",))
        self.loader = self._loader()

    def share(self, rank, world_size):
        """Process `rank`'s share of an evaluation pass (as `TensorBatches.share`)."""
        dataset = ImageFiles(self.dataset.samples[rank::world_size], self.dataset.transform)
        return FolderBatches(dataset, self.batch_size, bad_images=self.bad_images,
                             workers=self.workers, collate=self.collate)

    @property
    def num_images(self):
        return self.size

    def __len__(self):
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self):
        return self.iterate()

    def iterate(self, start=0):
        # with several sources per batch image, a pass of len(self) batches reads the images
        # that many times, each time in a new order (the reference's repeated, shuffled stream)
        order = torch.cat([torch.randperm(self.size, generator=self.generator) if self.shuffle
                           else torch.arange(self.size) for _ in range(self.sources)])
        per_batch = self.batch_size * self.sources
        self.indices[:] = [j for i in range(start, len(self)) for j in
                           self.part(order[i * per_batch:(i + 1) * per_batch]).tolist()]
        self.skipped = []
        for images, labels, bad in self.loader:
            if bad and self.bad_images == "stop":
                raise DataError(f"{bad[0]}: unreadable image (pass bad_images skip to skip "
                                "unreadable files)", fields=("bad_images",))
            self.skipped += bad
            if images is not None:
                yield images, labels


def folder_samples(root):
    """(samples, classes) of an ImageFolder tree root/<class>/<image>."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    try:
        tree = ImageFolder(root, allow_empty=False)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{root}: expected class subfolders holding images "
                        f"({', '.join(IMG_EXTENSIONS)}): {e}") from None
    return tree.samples, tuple(tree.classes)


def labels_text(path):
    """The text of a labels file: UTF-8 (with or without a BOM) or UTF-16 with its BOM (what
    PowerShell writes); other encodings are refused naming the line."""
    data = path.read_bytes()
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else (
        "utf-8-sig")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} "
                        f"text (byte 0x{data[e.start]:02x}): save the labels file as UTF-8"
                        ) from None


def flat_samples(root, labels_file, classes):
    """Samples of a flat folder labelled by a text file of `<file name> <label>` lines.

    The label is the line's last field (after whitespace, tabs or a comma), so file names may
    hold spaces; it is a class index or one of `classes`.
    """
    root, labels_file = Path(root), Path(labels_file)
    if not labels_file.is_file():
        raise DataError(f"labels file {labels_file} does not exist")
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for number, line in enumerate(labels_text(labels_file).splitlines(), 1):
        if not line.strip():
            continue
        fields = re.fullmatch(r"(.+?)[\s,]+([^\s,]+)", line.strip())
        if fields is None:
            raise DataError(f"{labels_file}:{number}: expected '<file name> <label>', got "
                            f"{line.strip()!r}")
        name, label = fields.group(1).strip(), fields.group(2)
        if label.isdigit() and int(label) < len(classes):
            target = int(label)
        elif label in index:
            target = index[label]
        else:
            raise DataError(f"{labels_file}:{number}: label {label!r} is neither a class index "
                            f"below {len(classes)} nor a class name of these weights")
        if not (root / name).is_file():
            raise DataError(f"{labels_file}:{number}: image {root / name} does not exist")
        samples.append((root / name, target))
    if not samples:
        raise DataError(f"labels file {labels_file} lists no images")
    return samples


def first_error(samples):
    """The error of the first image of `samples`, if none of them can be read, else None (it
    stops at the first readable one)."""
    error = None
    for path, _ in samples:
        try:
            open_image(path)
            return None
        except DataError as e:
            error = error or e
    return error


def refuse_unreadable(root, splits):
    """Refuse a folder with a split none of whose images can be read, naming every such split,
    before any epoch (or run folder) starts."""
    unread = {name: (len(samples), first_error(samples)) for name, samples in splits.items()
              if samples}
    unread = {name: (count, error) for name, (count, error) in unread.items() if error}
    if unread:
        raise DataError(f"{root}: " + "; ".join(
            f"no readable {name} images (all {count} fail, e.g. {error})" for name, (count, error)
            in unread.items()))


def make_folder_data(spec):
    """Training data from DIR/train (and DIR/val, DIR/test when present) ImageFolder trees.

    Without DIR/val, `spec.val_size` training images (a fixed random subset) are held out; without
    DIR/test the validation images stand in for the test set (`Data.test_is_val`: then nothing
    may be chosen on them). Evaluation sees the centre `spec.test_size` crop of the whole image
    resized to `test_size + 32` a side.
    """
    root = Path(spec.data_dir or "")
    if not (root / "train").is_dir():
        raise DataError(f"data_dir {root}: expected an ImageFolder tree with a 'train' "
                        "subfolder (train/<class>/<image>), and optionally 'val' and 'test'",
                        fields=("data_dir",))
    size = spec.image_size
    test_size = spec.test_size or size
    train, classes = folder_samples(root / "train")
    splits = {}
    for split in ("val", "test"):
        if (root / split).is_dir():
            splits[split], split_classes = folder_samples(root / split)
            if split_classes != classes:
                raise DataError(f"{root / split}: classes {split_classes} differ from the "
                                f"training classes {classes}")
    if "val" not in splits:
        if not 0 <= spec.val_size <= len(train) // 2:
            raise DataError(f"{root} has no 'val' subfolder, and val_size {spec.val_size} "
                            f"cannot be held out of its {len(train)} training images: pass "
                            f"val_size N with N ≤ {len(train) // 2}, or add {root / 'val'}",
                            fields=("val_size",))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        splits["val"] = [train[i] for i in order[:spec.val_size]]
        train = [train[i] for i in order[spec.val_size:]]
    test_is_val = "test" not in splits and bool(splits["val"])
    splits.setdefault("test", splits["val"])
    if not splits["test"]:
        raise DataError(f"{root}: nothing to evaluate on: add a 'val' or 'test' subfolder, or "
                        "hold out training images with val_size N", fields=("val_size",))
    refuse_unreadable(root, {"training": train, "validation": splits["val"],
                             "test": [] if splits["test"] is splits["val"] else splits["test"]})

    train_batches, eval_tf = pipeline_parts(spec.augmentation, size, test_size, len(classes))

    def batches(samples, transform, batch_size, **kw):
        return FolderBatches(ImageFiles(samples, transform), batch_size,
                             bad_images=spec.bad_images, workers=spec.workers, **kw)
    return Data(train=batches(train, batch_size=spec.batch_size, shuffle=True, drop_last=True,
                              seed=spec.seed, **train_batches),
                val=(batches(splits["val"], eval_tf, spec.eval_batch_size) if splits["val"]
                     else None),
                test=batches(splits["test"], eval_tf, spec.eval_batch_size),
                classes=classes, in_chans=3, image_size=size, mean=IMAGENET_MEAN,
                std=IMAGENET_STD, test_size=test_size, test_is_val=test_is_val)


def pipeline_parts(augmentation, size, test_size, num_classes):
    """(the training `FolderBatches` arguments, the evaluation transform) of an `AugmentSpec`'s
    pipeline: torchvision's transforms, or the reference's crops with mixing and RandAugment in
    the loader (`reference_pipeline`)."""
    if augmentation.pipeline == "reference":
        mixing = bool(augmentation.mixup_alpha)  # MixUp + CutMix together or neither (config)
        finish = MixAndAugment(collate_readable, num_classes if mixing else None,
                               augmentation.randaugment)
        return (dict(transform=reference_pipeline.train_transform(size, augmentation.flip),
                     collate=finish, sources=SOURCES_PER_MIXED_IMAGE if mixing else 1),
                reference_pipeline.eval_transform(test_size))
    return (dict(transform=folder_train_transform(size, augmentation.flip,
                                                  augmentation.randaugment,
                                                  augmentation.random_erasing)),
            image_transform(test_size, test_size + 32))
