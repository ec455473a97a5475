"""Weights files as ready models: build the right variant from any supported file, preprocess
images like the reference, evaluate on a folder, predict labels."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import CheckpointError, check_layout
from .convert import convert_state_dict, detect_format, infer_variant, load_weights, read_state_dict
from .data import IMAGENET_MEAN, IMAGENET_STD, DataError, Normalize
from .folders import (FolderBatches, ImageFiles, flat_samples, folder_samples, image_transform,
                      open_image)
from .train import top1_top5_hits
from .zoo import create_model

IMAGENET_CLASSES = tuple(
    Path(__file__).with_name("imagenet_classes.txt").read_text().splitlines())


def reference_preprocessing(size, in_chans=3, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """SPEC §11 evaluation: whole image → (S+32)² bicubic, centre crop S, mean/std."""
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


def read_metadata(path):
    """The string metadata of a `.safetensors` file, JSON values decoded; {} for other files."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from None
    values = {}
    for key, value in raw.items():
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


def load_pretrained(path, model_name=None, device=None):
    """Build the variant a weights file holds (Haiku, timm or normfree) and load it strictly."""
    from .haiku import is_haiku_pickle
    path = Path(path)
    raw = read_state_dict(path)
    meta = read_metadata(path)
    fmt = detect_format(raw)
    source_format = "haiku" if is_haiku_pickle(path) else fmt
    state = convert_state_dict(raw, fmt)
    name = model_name or meta.get("model") or infer_variant(state)
    numerics = meta.get("numerics") or ("timm" if source_format == "timm" else "deepmind")
    if "head.fc.weight" not in state or "stem.conv1.weight" not in state:
        raise CheckpointError(f"{path}: no stem.conv1 / head.fc weights: not a whole classifier")
    num_classes, in_chans = state["head.fc.weight"].shape[0], state["stem.conv1.weight"].shape[1]
    model = create_model(name, num_classes, numerics=numerics, in_chans=in_chans)
    load_weights(model, state, "normfree")  # first: another variant's shapes say more
    check_layout(model, meta.get("layout"), path)
    classes = tuple(meta.get("classes") or (IMAGENET_CLASSES if num_classes == 1000 else
                                            (str(i) for i in range(num_classes))))
    if len(classes) != num_classes:
        raise CheckpointError(f"{path}: metadata names {len(classes)} classes, the classifier "
                              f"has {num_classes}")
    preprocessing = meta.get("preprocessing") or reference_preprocessing(model.cfg.test_size,
                                                                         in_chans)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Pretrained(model.to(device).eval(), name, numerics, classes, preprocessing,
                      source_format)


def _class_index(folder_classes, weights_classes, root):
    """Folder class → weights' class index: by name when the names match, else by position."""
    if set(folder_classes) <= set(weights_classes):
        return {c: weights_classes.index(c) for c in folder_classes}
    if len(folder_classes) == len(weights_classes):
        return {c: i for i, c in enumerate(folder_classes)}  # sorted folder names, e.g. wnids
    raise DataError(f"{root}: {len(folder_classes)} class folders, but the weights have "
                    f"{len(weights_classes)} classes and the folder names are not among them")


@torch.no_grad()
def evaluate_folder(pretrained, data_dir, labels_file=None, image_size=None, batch_size=50,
                    bad_images="skip", progress=True):
    """Top-1/top-5 (%) of `pretrained` on an ImageFolder tree, or a flat folder + labels file."""
    if labels_file:
        samples = flat_samples(data_dir, labels_file, pretrained.classes)
    else:
        samples, folder_classes = folder_samples(data_dir)
        index = _class_index(folder_classes, pretrained.classes, data_dir)
        samples = [(path, index[folder_classes[label]]) for path, label in samples]
    batches = FolderBatches(ImageFiles(samples, pretrained.transform(image_size)), batch_size,
                            bad_images=bad_images)
    model = pretrained.model
    device = next(model.parameters()).device
    normalize = pretrained.normalize().to(device)
    correct1 = correct5 = count = 0
    for images, labels in tqdm(batches, desc="eval", disable=None if progress else True):
        logits = model(normalize(images.to(device)))
        labels = labels.to(device)
        hits1, hits5 = top1_top5_hits(logits, labels)
        correct1, correct5 = correct1 + hits1, correct5 + hits5
        count += len(labels)
    if not count:
        raise DataError(f"{data_dir}: no readable images")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count,
            "images": count, "skipped": len(batches.skipped), "model": pretrained.name,
            "numerics": pretrained.numerics,
            "image_size": image_size or pretrained.preprocessing["crop"]}


@torch.no_grad()
def predict(pretrained, paths, top=5, image_size=None):
    """For each image path: the `top` (class name, probability) pairs, most likely first."""
    transform = pretrained.transform(image_size)
    images = torch.stack([transform(open_image(p)) for p in paths])
    device = next(pretrained.model.parameters()).device
    logits = pretrained.model(pretrained.normalize().to(device)(images.to(device)))
    probs, indices = logits.float().softmax(1).topk(min(top, logits.shape[1]), dim=1)
    return [[(pretrained.classes[i], p) for i, p in zip(row_i.tolist(), row_p.tolist())]
            for row_i, row_p in zip(indices, probs)]
