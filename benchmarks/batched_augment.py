"""What augmenting the Fashion-MNIST training batches costs: torchvision's per-image pipeline
against `BatchAugment` (crop after 2 px padding, flips, random erasing p 0.25: the `fmnist`
preset), 200 batches of 128 through `TensorBatches` with 2 threads, in one process and in
alternating rounds so that the ratio holds on a shared machine; batches without augmentation show
what indexing alone costs. Run: python benchmarks/batched_augment.py"""
import statistics
import time

import torch

from normfree.data import FMNIST_DIR
from normfree.data.batch_augment import BatchAugment
from normfree.data.batches import TensorBatches
from normfree.data.fashion_mnist import load_fashion_mnist
from normfree.data.transforms import small_image_transform

BATCHES, BATCH_SIZE, ROUNDS = 200, 128, 5

torch.set_num_threads(2)
images, labels = load_fashion_mnist(FMNIST_DIR)["train"]
ways = {"per image (torchvision v2)": dict(transform=small_image_transform(28, 2, True, None,
                                                                             0.25)),
        "batched (BatchAugment)": dict(augment=BatchAugment(2, True, 0.25)),
        "no augmentation": {}}


def ms_per_batch(augmentation):
    batches = TensorBatches(images, labels, BATCH_SIZE, shuffle=True, drop_last=True,
                            **augmentation)
    start = time.perf_counter()
    for count, _ in enumerate(batches.iterate(), 1):
        if count == BATCHES:
            break
    return (time.perf_counter() - start) / BATCHES * 1000


ms_per_batch(ways["per image (torchvision v2)"])  # warm up torchvision's dispatch caches
rounds = {name: [] for name in ways}
for _ in range(ROUNDS):
    for name, augmentation in ways.items():
        rounds[name].append(ms_per_batch(augmentation))
for name, times in rounds.items():
    print(f"{name:28s} median {statistics.median(times):6.2f}, best {min(times):6.2f} "
          f"ms/batch of {BATCH_SIZE}")
old, new = (statistics.median(rounds[name]) for name in list(ways)[:2])
print(f"batched is {old / new:.1f}× faster (medians)")
