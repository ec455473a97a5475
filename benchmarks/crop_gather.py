"""Why `crop_and_flip` gathers by flat pixel numbers (`Tensor.take`): it against indexing the
padded batch with four broadcast index tensors (image, channel, row, column), both on the
`fmnist` preset's batch (128 uint8 1×28×28 images, 2 px padding, random crops and flips), calls
interleaved, medians of `time_calls`. Run: python benchmarks/crop_gather.py [--threads N]"""
import argparse

import torch
import torch.nn.functional as F

from normfree.analysis.bench import time_calls
from normfree.data.batch_augment import BatchAugment, crop_and_flip
from normfree.runtime import machine_info

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--repeats", type=int, default=2000)
args = parser.parse_args()
torch.set_num_threads(args.threads)
PADDING = 2
generator = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8, generator=generator)
draw = BatchAugment(PADDING, True, 0.0).draw(128, 28, 28, generator)


def four_index_tensors():
    count, channels, height, width = images.shape
    padded = F.pad(images, (PADDING,) * 4)
    rows = draw.crop_top[:, None] + torch.arange(height)
    columns = torch.arange(width)
    columns = torch.where(draw.flipped[:, None], columns.flip(0), columns)
    columns = columns + draw.crop_left[:, None]
    return padded[torch.arange(count)[:, None, None, None], torch.arange(channels)[:, None, None],
                  rows[:, None, :, None], columns[:, None, None, :]]


assert torch.equal(four_index_tensors(), crop_and_flip(images, PADDING, draw))
(take, _, _), (indexed, _, _) = time_calls(lambda: crop_and_flip(images, PADDING, draw),
                                           four_index_tensors, warmup=50, repeats=args.repeats)
info = machine_info()
print(f"{info['cpu']}, {args.threads} threads, torch {info['torch']}, commit {info['commit']}")
print(f"take: {take * 1e6:.0f} µs, four index tensors: {indexed * 1e6:.0f} µs a batch "
      f"({indexed / take:.2f}×)")
