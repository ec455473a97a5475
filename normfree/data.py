"""Datasets: Fashion-MNIST from Debian's IDX files, any ImageFolder tree, synthetic images.

Images stay uint8 until they reach the model's device, where `Normalize` turns them into float;
small datasets live in memory as one tensor and are augmented per image with torchvision v2
transforms (about 30-70 µs an image here, a few % of a training step).
"""

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"


class DataError(ValueError):
    """A dataset is missing or malformed; the message names the file and what was expected."""


def read_idx(path):
    """Read an IDX file (optionally gzipped) of unsigned bytes into a uint8 tensor."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (expected magic bytes 00 00, got "
                        f"{raw[:4].hex() or 'nothing'})")
    if raw[2] != 0x08:
        raise DataError(f"{path}: expected unsigned-byte data (type 0x08), got 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dims)")
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    count = math.prod(shape)
    if len(raw) != header + count:
        raise DataError(f"{path}: IDX header says shape {shape} ({header + count} bytes), "
                        f"file has {len(raw)} bytes")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _find(data_dir, stem):
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {data_dir}. Install the "
                    f"dataset with: {INSTALL_HINT} (as root), or pass --data-dir DIR with the "
                    "four IDX files.")


def load_fashion_mnist(data_dir=FMNIST_DIR):
    """{"train": (images, labels), "test": (...)}, images uint8 (N, 1, 28, 28), labels int64."""
    data_dir = Path(data_dir)
    splits = {}
    for split, (image_stem, label_stem) in FMNIST_FILES.items():
        images = read_idx(_find(data_dir, image_stem))
        labels = read_idx(_find(data_dir, label_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{data_dir}: {split} images {tuple(images.shape)} and labels "
                            f"{tuple(labels.shape)} do not pair up (expected (N, H, W) and (N,))")
        if int(labels.max()) >= len(FMNIST_CLASSES):
            raise DataError(f"{data_dir}: {split} labels exceed the 10 Fashion-MNIST classes")
        splits[split] = (images.unsqueeze(1), labels.long())
    return splits


def synthetic_images(num_images, num_classes=10, size=16, channels=3, seed=0):
    """A learnable stand-in dataset: one random template per class plus noise, as uint8."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, channels, size, size, generator=g) * 255
    labels = torch.randint(0, num_classes, (num_images,), generator=g)
    noise = torch.randn(num_images, channels, size, size, generator=g) * 40
    images = (templates[labels] + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


def holdout_split(images, labels, val_size, seed=0):
    """Split off `val_size` examples (a fixed random subset) for model selection."""
    if not 0 <= val_size < len(labels):
        raise DataError(f"val_size must be in [0, {len(labels)}), got {val_size}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    return (images[train], labels[train]), (images[val], labels[val])


class Sharded:
    """A global batch order split over data-parallel processes: each global batch of
    `batch_size` gives process `rank` its own consecutive `batch_size / world_size` part."""

    rank, world_size = 0, 1

    def shard(self, rank, world_size):
        if self.batch_size % world_size:
            raise ValueError(f"--batch-size {self.batch_size} (the global batch) must divide "
                             f"evenly over {world_size} processes")
        self.rank, self.world_size = rank, world_size

    def part(self, index):
        per = len(index) // self.world_size
        return index[self.rank * per:(self.rank + 1) * per]


class TensorBatches(Sharded):
    """Batches of an in-memory uint8 dataset; `transform` (torchvision v2) runs per image."""

    def __init__(self, images, labels, batch_size, shuffle=False, transform=None,
                 drop_last=False, seed=0):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.iterate()

    def iterate(self, start=0):
        """Batches `start`, `start` + 1, ... of this pass (the order is drawn in full first, so
        resuming mid-epoch sees the same batches)."""
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(start, len(self)):
            index = self.part(order[i * self.batch_size:(i + 1) * self.batch_size])
            images = self.images[index]
            if self.transform is not None:
                images = torch.stack([self.transform(image) for image in images])
            yield images, self.labels[index]


class Normalize(nn.Module):
    """uint8 (or [0, 255] float) images → float, normalised by per-channel mean and std."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("inv_std", 1 / (torch.tensor(std).view(1, -1, 1, 1) * 255))

    def forward(self, images):
        return (images.float() - self.mean) * self.inv_std


@dataclass
class Data:
    train: object
    val: object
    test: object
    classes: tuple
    in_chans: int
    image_size: int
    mean: tuple
    std: tuple


def small_image_transform(size, crop_padding, flip, randaugment, random_erasing):
    """Per-image training augmentation for small greyscale/colour images (uint8 in and out)."""
    steps = []
    if crop_padding:
        steps.append(v2.RandomCrop(size, padding=crop_padding))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment(*randaugment))
    if random_erasing:
        steps.append(v2.RandomErasing(random_erasing, value=0))
    return v2.Compose(steps) if steps else None


def make_data(cfg):
    """The train / val / test batches described by a `TrainConfig`."""
    if cfg.dataset == "fashion-mnist":
        splits = load_fashion_mnist(cfg.data_dir or FMNIST_DIR)
        train_set, test_set = splits["train"], splits["test"]
        classes, mean, std = FMNIST_CLASSES, FMNIST_MEAN, FMNIST_STD
    elif cfg.dataset == "synthetic":
        images, labels = synthetic_images(cfg.synthetic_size + 256, 10, cfg.image_size,
                                          cfg.in_chans, seed=cfg.seed)
        train_set, test_set = (images[256:], labels[256:]), (images[:256], labels[:256])
        classes, mean, std = tuple(str(i) for i in range(10)), (0.5,) * cfg.in_chans, \
            (0.25,) * cfg.in_chans
    elif cfg.dataset == "folder":
        from .folders import make_folder_data
        return make_folder_data(cfg)
    else:
        raise DataError(f"dataset must be 'fashion-mnist', 'synthetic' or 'folder', got "
                        f"{cfg.dataset!r}")
    train_set, val_set = holdout_split(*train_set, cfg.val_size, seed=0)
    size = train_set[0].shape[-1]
    augment = small_image_transform(size, cfg.crop_padding, cfg.flip, cfg.randaugment,
                                    cfg.random_erasing)
    batches = dict(batch_size=cfg.batch_size)
    eval_batches = dict(batch_size=cfg.eval_batch_size)
    return Data(
        train=TensorBatches(*train_set, shuffle=True, transform=augment, drop_last=True,
                            seed=cfg.seed, **batches),
        val=TensorBatches(*val_set, **eval_batches) if cfg.val_size else None,
        test=TensorBatches(*test_set, **eval_batches),
        classes=classes, in_chans=train_set[0].shape[1], image_size=size, mean=mean, std=std)
