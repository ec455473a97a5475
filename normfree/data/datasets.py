"""The data of a run: `make_data(spec)` gives the train / val / test batches of Fashion-MNIST,
an image-folder tree or synthetic images, as a `DataSpec` describes them."""

import torch

from ..errors import DataError
from .batch_augment import BatchAugment
from .batches import Data, TensorBatches
from . import FMNIST_DIR
from .fashion_mnist import FMNIST_CLASSES, FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from .folders import make_folder_data
from .transforms import small_image_transform


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
        raise DataError(f"val_size must be in [0, {len(labels)}), got {val_size}",
                        fields=("val_size",))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    return (images[train], labels[train]), (images[val], labels[val])


def select_classes(images, labels, classes):
    """The examples of `classes` (indices), relabelled 0, 1, ... in that order."""
    relabel = torch.full((int(labels.max()) + 1,), -1, dtype=labels.dtype)
    relabel[list(classes)] = torch.arange(len(classes), dtype=labels.dtype)
    keep = relabel[labels] >= 0
    return images[keep], relabel[labels[keep]]


def balanced_subset(images, labels, per_class, seed):
    """`per_class` examples of every class, drawn at random with `seed`, in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        if len(members) < per_class:
            raise DataError(f"train_per_class {per_class}: class {c} has only "
                            f"{len(members)} training images", fields=("train_per_class",))
        picked.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    index = torch.cat(picked)
    index = index[torch.randperm(len(index), generator=g)]
    return images[index], labels[index]


def restrict(spec, train_set, val_set, test_set, classes):
    """Apply `spec.classes` (all splits) and `spec.train_per_class` (the training split)."""
    if spec.classes:
        if max(spec.classes) >= len(classes):
            raise DataError(f"classes {','.join(map(str, spec.classes))}: the dataset has "
                            f"classes 0-{len(classes) - 1}", fields=("classes",))
        train_set, test_set = (select_classes(*s, spec.classes) for s in (train_set, test_set))
        val_set = select_classes(*val_set, spec.classes) if len(val_set[1]) else val_set
        classes = tuple(classes[c] for c in spec.classes)
    if spec.train_per_class:
        train_set = balanced_subset(*train_set, spec.train_per_class, spec.seed)
    return train_set, val_set, test_set, classes


def train_augmentation(augmentation, size):
    """`TensorBatches` arguments for an `AugmentSpec`: batched, or with RandAugment (which has
    no batched form here) the whole torchvision pipeline per image."""
    if augmentation.randaugment:
        return dict(transform=small_image_transform(
            size, augmentation.crop_padding, augmentation.flip, augmentation.randaugment,
            augmentation.random_erasing))
    if augmentation.crop_padding or augmentation.flip or augmentation.random_erasing:
        return dict(augment=BatchAugment(augmentation.crop_padding, augmentation.flip,
                                         augmentation.random_erasing))
    return {}


def make_data(spec):
    """The train / val / test batches a `DataSpec` describes."""
    if spec.dataset == "fashion-mnist":
        splits = load_fashion_mnist(spec.data_dir or FMNIST_DIR)
        train_set, test_set = splits["train"], splits["test"]
        classes, mean, std = FMNIST_CLASSES, FMNIST_MEAN, FMNIST_STD
    elif spec.dataset == "synthetic":
        images, labels = synthetic_images(spec.synthetic_size + 256, 10, spec.image_size,
                                          spec.in_chans, seed=spec.seed)
        train_set, test_set = (images[256:], labels[256:]), (images[:256], labels[:256])
        classes = tuple(str(i) for i in range(10))
        mean, std = (0.5,) * spec.in_chans, (0.25,) * spec.in_chans
    elif spec.dataset == "folder":
        return make_folder_data(spec)
    else:
        raise DataError(f"dataset must be 'fashion-mnist', 'synthetic' or 'folder', got "
                        f"{spec.dataset!r}", fields=("dataset",))
    # the held-out set is drawn from all the training images, so that it is the same whatever
    # `classes` and `train_per_class` take from the rest
    train_set, val_set = holdout_split(*train_set, spec.val_size, seed=0)
    train_set, val_set, test_set, classes = restrict(spec, train_set, val_set, test_set, classes)
    size = train_set[0].shape[-1]
    batches = dict(batch_size=spec.batch_size)
    eval_batches = dict(batch_size=spec.eval_batch_size)
    return Data(
        train=TensorBatches(*train_set, shuffle=True, drop_last=True, seed=spec.seed,
                            **train_augmentation(spec.augmentation, size), **batches),
        val=TensorBatches(*val_set, **eval_batches) if spec.val_size else None,
        test=TensorBatches(*test_set, **eval_batches),
        classes=classes, in_chans=train_set[0].shape[1], image_size=size, mean=mean, std=std,
        train_eval=TensorBatches(*train_set, **eval_batches))
