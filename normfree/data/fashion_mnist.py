"""Fashion-MNIST from the IDX files of Debian's `dataset-fashion-mnist` package (or any folder
holding the four files, gzipped or not)."""

import gzip
import math
import zlib
from pathlib import Path

import torch

from ..errors import DataError
from . import FMNIST_DIR, INSTALL_HINT

FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


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
                    f"dataset with: {INSTALL_HINT} (as root), or pass data_dir DIR with the "
                    "four IDX files.", fields=("data_dir",))


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
