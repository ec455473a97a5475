"""Weights files as ready models: build the right variant from any supported file (Haiku, timm,
normfree), with its classes and the preprocessing it expects; evaluate, predict, convert."""

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.batches import Normalize
from ..data.folders import open_image
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_transform
from ..errors import CheckpointError, DataError
from ..evaluation import evaluate_folder
from ..nn.zoo import create_model
from ..runtime import default_device
from .keymaps import convert_state_dict, detect_format
from .loading import file_kind, infer_variant, load_weights, read_state_dict
from .metadata import check_layout, export_weights, read_metadata


@functools.cache
def imagenet_classes():
    """The 1000 ImageNet class names, in the released weights' order."""
    return tuple(Path(__file__).with_name("imagenet_classes.txt").read_text().splitlines())


def reference_preprocessing(size, in_chans=3, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The reference's evaluation (docs/architecture.md §11): whole image → (S+32)² bicubic,
    centre crop S, mean/std."""
    return {"resize": size + 32, "crop": size, "interpolation": "bicubic", "mean": list(mean),
            "std": list(std), "in_chans": in_chans}


@dataclass
class Pretrained:
    """A model with everything needed to feed it and read its output."""
    model: nn.Module
    name: str
    numerics: str
    classes: tuple
    preprocessing: dict
    source_format: str

    def transform(self, image_size=None):
        """PIL image → uint8 tensor, as the weights expect (`image_size` overrides the crop)."""
        pre = self.preprocessing
        if image_size:
            pre = {**pre, "crop": image_size, "resize": image_size + pre["resize"] - pre["crop"]}
        return image_transform(pre["crop"], pre["resize"], pre["in_chans"], pre["interpolation"])

    def normalize(self):
        return Normalize(self.preprocessing["mean"], self.preprocessing["std"])

    def evaluate_folder(self, data_dir, labels_file=None, image_size=None, batch_size=50,
                        bad_images="skip", progress=True):
        """Top-1/top-5 (%) on an ImageFolder tree, or a flat folder + labels file, with these
        weights' preprocessing (`image_size` overrides the crop)."""
        device = next(self.model.parameters()).device
        result = evaluate_folder(self.model, data_dir, classes=self.classes,
                                 transform=self.transform(image_size),
                                 normalize=self.normalize().to(device), labels_file=labels_file,
                                 batch_size=batch_size, bad_images=bad_images, progress=progress)
        return {**result, "model": self.name, "numerics": self.numerics,
                "image_size": image_size or self.preprocessing["crop"]}


def load_pretrained(path, model_name=None, device=None):
    """Build the variant a weights file holds (Haiku, timm or normfree) and load it strictly."""
    path = Path(path)
    raw = read_state_dict(path)
    meta = read_metadata(path)
    fmt = detect_format(raw)
    source_format = "haiku" if file_kind(path) == "pickle" else fmt
    state = convert_state_dict(raw, fmt)
    name = model_name or meta.get("model") or infer_variant(state)
    numerics = meta.get("numerics") or ("timm" if source_format == "timm" else "deepmind")
    if "head.fc.weight" not in state or "stem.conv1.weight" not in state:
        raise CheckpointError(f"{path}: no stem.conv1 / head.fc weights: not a whole classifier")
    num_classes, in_chans = state["head.fc.weight"].shape[0], state["stem.conv1.weight"].shape[1]
    model = create_model(name, num_classes, numerics=numerics, in_chans=in_chans)
    load_weights(model, state, "normfree")  # first: another variant's shapes say more
    check_layout(model, meta.get("layout"), path)
    classes = tuple(meta.get("classes") or (imagenet_classes() if num_classes == 1000 else
                                            (str(i) for i in range(num_classes))))
    if len(classes) != num_classes:
        raise CheckpointError(f"{path}: metadata names {len(classes)} classes, the classifier "
                              f"has {num_classes}")
    preprocessing = meta.get("preprocessing") or reference_preprocessing(model.cfg.test_size,
                                                                         in_chans)
    device = default_device(device)
    return Pretrained(model.to(device).eval(), name, numerics, classes, preprocessing,
                      source_format)


@torch.no_grad()
def predict(pretrained, paths, top=5, image_size=None, bad_images="stop"):
    """For each image path: the `top` (class name, probability) pairs, most likely first.

    An unreadable image raises `DataError` naming it, or with `bad_images="skip"` gets the
    `DataError` in its place in the list.
    """
    transform = pretrained.transform(image_size)
    images = []
    for path in paths:
        try:
            images.append(transform(open_image(path)))
        except DataError as e:
            if bad_images != "skip":
                raise
            images.append(e)
    readable = [image for image in images if not isinstance(image, DataError)]
    if not readable:
        return images
    device = next(pretrained.model.parameters()).device
    batch = torch.stack(readable).to(device)
    logits = pretrained.model(pretrained.normalize().to(device)(batch))
    probs, indices = logits.float().softmax(1).topk(min(top, logits.shape[1]), dim=1)
    tops = iter([(pretrained.classes[i], p) for i, p in zip(row_i.tolist(), row_p.tolist())]
                for row_i, row_p in zip(indices, probs))
    return [image if isinstance(image, DataError) else next(tops) for image in images]


def convert_file(src, dst, model_name=None):
    """Haiku, timm or normfree weights → a normfree `.safetensors` with metadata (returned)."""
    src = Path(src)
    pretrained = load_pretrained(src, model_name, device="cpu")
    digest = hashlib.sha256()
    with src.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    metadata = {"model": pretrained.name, "numerics": pretrained.numerics,
                "num_classes": len(pretrained.classes), "classes": list(pretrained.classes),
                "source": src.name, "source_format": pretrained.source_format,
                "source_sha256": digest.hexdigest(), "preprocessing": pretrained.preprocessing}
    export_weights(pretrained.model, dst, metadata)
    return metadata
