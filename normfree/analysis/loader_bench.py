"""How fast the training input pipeline runs, against timm's: images per second per loader worker
process, decoding JPEGs and augmenting them as the `imagenet-f0` preset does, on the same folder
in the same run (rounds alternate between the two, so the machine's moods hit both alike).

The peer is timm's uint8 path (`create_loader(use_prefetcher=True)`, whose workers hand uint8
batches to a device-side normaliser) at the closest augmentation: random-resized crop, flip and
`rand-m5-n4`. normfree's loader runs the preset's reference pipeline: each image it hands over
is mixed from two decoded, cropped and resized source images, then RandAugmented, so it does
about twice timm's decoding and resizing per image (docs/benchmarks.md). Without a folder,
one of generated photo-like JPEGs is written (about
400 × 350, varied sizes and aspect ratios, like ImageNet's).
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.datasets import make_data
from ..data.spec import DataSpec
from ..errors import DataError, MissingDependency
from ..runtime import machine_info
from ..training.config import preset
from ..training.specs import spec_from


def write_photo_folder(root, images_per_class=32, classes=4, seed=0, size=(400, 350)):
    """An ImageFolder tree `root`/{train,val}/<class>/*.jpg of photo-like images: smooth colour
    fields with edges and grain, JPEG quality 90, sides within ±25 % of `size`. Returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (("train", images_per_class), ("val", max(images_per_class // 8, 1))):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                width, height = (int(s * rng.uniform(0.75, 1.25)) for s in size)
                photo_like(rng, width, height).save(folder / f"{i}.jpg", quality=90)
    return root


def photo_like(rng, width, height):
    """A smooth random colour field (upsampled 12 × 12 noise), a few hard-edged shapes and
    pixel grain: what JPEG decoding and resampling see in photographs, not flat test cards."""
    field = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    pixels = np.asarray(field.resize((width, height), Image.BICUBIC), dtype=np.float32)
    for _ in range(3):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top:top + height // 3, left:left + width // 3] *= rng.uniform(0.4, 1.4, 3)
    pixels += rng.normal(0, 8, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def normfree_batches(folder, batch_size, image_size, workers):
    """The `imagenet-f0` preset's training batches from `folder`, as a run draws them."""
    recipe = preset("imagenet-f0", data_dir=str(folder), batch_size=batch_size,
                    image_size=image_size, workers=workers)
    train = make_data(spec_from(DataSpec, recipe)).train
    return lambda: (images for images, _ in train.iterate())


def timm_batches(folder, batch_size, image_size, workers):
    """timm's training loader's uint8 batches (its prefetcher's input) from the same folder."""
    try:
        from timm.data import create_dataset, create_loader
    except ImportError:
        raise MissingDependency("bench --loader compares with timm: pip install timm") from None
    dataset = create_dataset("", root=str(Path(folder) / "train"), is_training=True)
    loader = create_loader(dataset, input_size=(3, image_size, image_size),
                           batch_size=batch_size, is_training=True, use_prefetcher=True,
                           auto_augment="rand-m5-n4", color_jitter=0.0, interpolation="bicubic",
                           num_workers=workers, device=torch.device("cpu"))
    return lambda: (images for images, _ in loader.loader)


def images_per_second(make_pass, batches):
    """Images per second over `batches` batches of a pass, after its first (worker start-up)."""
    stream = make_pass()
    next(stream)
    seen, start = 0, time.perf_counter()
    for _, images in zip(range(batches), stream):
        seen += len(images)
    return seen / (time.perf_counter() - start)


def bench_loader(folder=None, batch_size=32, image_size=192, workers=1, batches=6, rounds=3,
                 peer="timm"):
    """A record: normfree's and (with `peer`) timm's images/s per worker, median of `rounds`
    alternating passes, and their ratio."""
    with tempfile.TemporaryDirectory() as scratch:
        if folder is None:
            folder = write_photo_folder(Path(scratch) / "photos",
                                        images_per_class=-(-batch_size * (batches + 1) // 4))
        if not (Path(folder) / "train").is_dir():
            raise DataError(f"--data {folder}: expected an ImageFolder tree with 'train' and "
                            "'val' subfolders")
        loaders = {"normfree": normfree_batches(folder, batch_size, image_size, workers)}
        if peer:
            loaders["timm"] = timm_batches(folder, batch_size, image_size, workers)
        rates = {name: [] for name in loaders}
        for _ in range(rounds):
            for name, make_pass in loaders.items():
                rates[name].append(images_per_second(make_pass, batches) / max(workers, 1))
    record = {"image_size": image_size, "batch_size": batch_size, "workers": workers,
              "augmentation": "imagenet-f0 preset; timm: rand-m5-n4",
              **{f"{name}_img_s_per_worker": round(statistics.median(r), 1)
                 for name, r in rates.items()}}
    if peer:
        record["ratio"] = round(record["normfree_img_s_per_worker"]
                                / record["timm_img_s_per_worker"], 3)
    return {**record, **machine_info()}
