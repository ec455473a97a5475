"""Batches of a dataset, split over data-parallel processes: in-memory uint8 tensors
(`TensorBatches`) and what a run's data is (`Data`); `Normalize` turns uint8 into float on the
model's device.

Images stay uint8 until they reach the model's device; small datasets live in memory as one
tensor and are augmented a batch at a time (`BatchAugment`), or per image with torchvision v2
transforms when RandAugment is on (docs/benchmarks.md).
"""

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


class Sharded:
    """A global batch order split over data-parallel processes: each global batch of
    `batch_size` gives process `rank` its own consecutive `batch_size / world_size` part."""

    rank, world_size = 0, 1
    per_process_multiple = 1  # what each process's share of a batch must be a multiple of

    def shard(self, rank, world_size):
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} (the global batch) must divide "
                              f"evenly over {world_size} processes", fields=("batch_size",))
        self.rank, self.world_size = rank, world_size

    def part(self, index):
        per = len(index) // self.world_size
        return index[self.rank * per:(self.rank + 1) * per]


class TensorBatches(Sharded):
    """Batches of an in-memory uint8 dataset. `transform` (torchvision v2) runs per image on
    torch's global RNG; `augment` (a `BatchAugment`) runs on the whole batch with parameters
    drawn from `generator`, as `iterate` says."""

    def __init__(self, images, labels, batch_size, shuffle=False, transform=None, augment=None,
                 drop_last=False, seed=0):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.transform, self.augment = transform, augment
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_images(self):
        return len(self.labels)

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def share(self, rank, world_size):
        """Process `rank`'s share of an evaluation pass: every `world_size`-th image from
        `rank`, so the processes together see each image once, however many there are."""
        return TensorBatches(self.images[rank::world_size], self.labels[rank::world_size],
                             self.batch_size, transform=self.transform)

    def __iter__(self):
        return self.iterate()

    def iterate(self, start=0):
        """Batches `start`, `start` + 1, ... of this pass, the same as an uninterrupted pass
        gives them, so resuming mid-epoch sees the same batches: the pass first draws the order
        in full, then one number, `pass_seed`; batch i's augmentation draws from its own
        generator seeded `pass_seed + i`, for the whole global batch (each process applies its
        rows), so it depends neither on earlier batches nor on the number of processes."""
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        pass_seed = int(torch.randint(2 ** 62, (), generator=self.generator))
        for i in range(start, len(self)):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size]
            index = self.part(batch)
            images = self.images[index]
            if self.transform is not None:
                images = torch.stack([self.transform(image) for image in images])
            if self.augment is not None:
                generator = torch.Generator(self.images.device).manual_seed(pass_seed + i)
                draw = self.augment.draw(len(batch), *images.shape[-2:], generator)
                images = self.augment(images, draw.rows(self.part))
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
    train_eval: object = None  # the training images unaugmented, in order (train accuracy)
    test_size: int = None  # the side of evaluated images (None: image_size)
    test_is_val: bool = False  # the test split is the validation split: choose nothing on it

    def __post_init__(self):
        self.test_size = self.test_size or self.image_size
