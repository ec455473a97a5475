"""Weights files as ready models: build the right variant from any supported file (Haiku, timm,
normfree), with its classes and the preprocessing it expects; evaluate, predict, convert."""

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.batches import Normalize
from ..data.folders import open_image
from ..data import IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_SIZE
from ..data.transforms import image_transform
from ..errors import CheckpointError, ConfigError, DataError
from ..evaluation import evaluate_folder, protocol
from ..nn import zoo
from ..nn.counts import activation_sizes
from ..runtime import default_device, refuse_unaffordable
from . import hub, releases
from .keymaps import convert_state_dict, detect_format
from .loading import file_kind, infer_variant, load_weights, read_state_dict
from .metadata import check_layout, export_weights, read_metadata


@functools.cache
def imagenet_classes():
    """The 1000 ImageNet class names, in the released weights' order."""
    return tuple(Path(__file__).with_name("imagenet_classes.txt").read_text().splitlines())


def reference_preprocessing(size, in_chans=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                            resize_mode="reference"):
    """The reference's evaluation (docs/architecture.md §11): whole image → (S+32)² bicubic,
    centre crop S, mean/std. `resize_mode` "reference" resizes as its TensorFlow code does
    (no antialiasing, float, unclamped); "squash" the same sizes with torchvision's
    antialiased bicubic to uint8 (what runs of the torchvision pipeline evaluate with)."""
    return {"resize": size + 32, "crop": size, "interpolation": "bicubic", "mean": list(mean),
            "std": list(std), "in_chans": in_chans, "resize_mode": resize_mode}


@dataclass
class Pretrained:
    """A model with everything needed to feed it and read its output."""
    model: nn.Module
    name: str
    numerics: str
    classes: tuple
    preprocessing: dict
    source_format: str
    path: Path = None   # the file read (for a hub id: in the cache)
    train_size: int = None  # the size a normfree run trained them at (its exported config)

    def transform(self, image_size=None):
        """PIL image → uint8 tensor, as the weights expect (`image_size` overrides the crop)."""
        pre = self.preprocessing
        return image_transform(image_size or pre["crop"], self.resize_for(image_size),
                               pre["in_chans"], pre["interpolation"],
                               pre.get("resize_mode", "squash"))

    def resize_for(self, image_size=None):
        """The size images are resized to before the centre crop of `image_size` (default: the
        weights' own crop): timm's weights keep their crop fraction, the reference its 32-px
        margin."""
        pre = self.preprocessing
        if not image_size:
            return pre["resize"]
        return (math.floor(image_size / pre["crop_pct"]) if "crop_pct" in pre
                else image_size + pre["resize"] - pre["crop"])

    def normalize(self):
        return Normalize(self.preprocessing["mean"], self.preprocessing["std"])

    def check_input(self, image_size, batch_size):
        """Refuse a crop beyond `MAX_IMAGE_SIZE`, or batches whose layer outputs alone exceed
        the free memory, before any image is decoded."""
        size = image_size or self.preprocessing["crop"]
        if size > MAX_IMAGE_SIZE:
            raise ConfigError(f"--image-size {size}: predict and eval take at most "
                              f"{MAX_IMAGE_SIZE} px")
        largest, _ = activation_sizes(self.model.cfg, size)
        refuse_unaffordable(batch_size * 2 * largest * 4, next(self.model.parameters()).device,
                            f"--image-size {size} with {batch_size} image(s) a batch")

    def evaluate_folder(self, data_dir, labels_file=None, image_size=None, batch_size=50,
                        bad_images="skip", progress=True, tta_flip=False):
        """Top-1/top-5 (%) on an ImageFolder tree, or a flat folder + labels file, with these
        weights' preprocessing (`image_size` overrides the crop), `tta_flip` as in training."""
        self.check_input(image_size, batch_size)
        device = next(self.model.parameters()).device
        transform = self.transform(image_size)
        result = evaluate_folder(self.model, data_dir, classes=self.classes, transform=transform,
                                 normalize=self.normalize().to(device), labels_file=labels_file,
                                 batch_size=batch_size, bad_images=bad_images, progress=progress,
                                 tta_flip=tta_flip)
        crop = image_size or self.preprocessing["crop"]
        return {**result, "model": self.name, "numerics": self.numerics, "image_size": crop,
                "protocol": protocol(crop, self.resize_for(image_size), tta_flip)}


def load_pretrained(source, model_name=None, device=None, **overrides):
    """Build the variant a weights file holds (Haiku, timm or normfree; a path, or a Hugging
    Face Hub id `hf-hub:owner/name`) and load it strictly. `overrides`: `NFConfig` fields
    that do not change the parameters (e.g. `dropout`)."""
    path, timm_config = hub.fetch(source) if hub.is_hub_id(source) else (source, None)
    path = Path(path)
    if timm_config is None and path.with_name("config.json").is_file():
        timm_config = path.with_name("config.json")
    timm_config = _read_timm_config(timm_config)
    raw = read_state_dict(path)
    meta = read_metadata(path)
    fmt = detect_format(raw)
    source_format = "haiku" if file_kind(path) == "pickle" else fmt
    state = convert_state_dict(raw, fmt)
    if "head.fc.weight" not in state or "stem.conv1.weight" not in state:
        raise CheckpointError(f"{path}: no stem.conv1 / head.fc weights: not a whole classifier")
    try:
        name = (model_name or meta.get("model") or releases.model_of_timm_config(timm_config)
                or infer_variant(state))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    numerics = meta.get("numerics") or ("timm" if source_format == "timm" else "deepmind")
    num_classes, in_chans = state["head.fc.weight"].shape[0], state["stem.conv1.weight"].shape[1]
    model = zoo.build_model(name, num_classes, numerics=numerics, in_chans=in_chans,
                            **overrides)
    load_weights(model, state, "normfree")  # first: another variant's shapes say more
    check_layout(model, meta.get("layout"), path)
    classes = tuple(meta.get("classes") or timm_config.get("label_names") or (
        imagenet_classes() if num_classes == 1000 else (str(i) for i in range(num_classes))))
    if len(classes) != num_classes:
        raise CheckpointError(f"{path}: metadata names {len(classes)} classes, the classifier "
                              f"has {num_classes}")
    device = default_device(device)
    trained = meta.get("config")
    return Pretrained(model.to(device).eval(), name, numerics, classes,
                      _preprocessing(meta, timm_config, source_format, model), source_format,
                      path, trained.get("image_size") if isinstance(trained, dict) else None)


def _read_timm_config(path):
    if path is None:
        return {}
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable timm config.json ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a timm config.json (expected a JSON object)")
    # a normfree run folder has a config.json too (the training config): not timm's
    return config if "architecture" in config or "pretrained_cfg" in config else {}


def _preprocessing(meta, timm_config, source_format, model):
    """What the weights were evaluated with: normfree's record, timm's config.json, timm's
    facts for its released weights, else the reference's (DeepMind's files)."""
    in_chans = model.cfg.in_chans
    if meta.get("preprocessing"):
        return meta["preprocessing"]
    if timm_config.get("pretrained_cfg") or timm_config.get("input_size"):
        try:
            return {**releases.preprocessing_from_timm_config(timm_config), "in_chans": in_chans}
        except (KeyError, TypeError, IndexError, ZeroDivisionError):
            raise CheckpointError("timm config.json: no usable input_size / crop_pct") from None
    release = releases.RELEASES.get(model.name)
    if source_format == "timm" and release is not None and in_chans == 3:
        return releases.release_preprocessing(release)
    return reference_preprocessing(model.cfg.test_size, in_chans)


def create_model(name, num_classes=None, *, pretrained=False, numerics=None, device=None,
                 **overrides):
    """A model by name (`normfree.create_model`), on the CPU unless `device` says otherwise:
    `nn.zoo.build_model`'s fresh one, or with `pretrained=True` loaded with the weights its
    makers released (`releases.RELEASES`) from the Hugging Face Hub. Then `num_classes` other
    than the weights' replaces the classifier (for fine-tuning) and `numerics` other than the
    weights' switches conventions."""
    if not pretrained:
        model = zoo.build_model(name, num_classes or 1000, numerics=numerics or "deepmind",
                                **overrides)
        return model if device is None else model.to(device)
    release = releases.RELEASES.get(name)
    if release is None:
        raise ConfigError(f"no released weights for {name!r}; released: "
                          f"{', '.join(releases.RELEASES)}")
    loaded = load_pretrained(release.hub_id, name, device or "cpu", **overrides)
    model = loaded.model
    if numerics and numerics != loaded.numerics:
        switched = zoo.build_model(name, len(loaded.classes), numerics=numerics, **overrides)
        switched.load_state_dict(model.state_dict())
        model = switched.to(next(model.parameters()).device).eval()
    if num_classes and num_classes != len(loaded.classes):
        model.reset_classifier(num_classes)
    return model


@torch.no_grad()
def predict(pretrained, paths, top=5, image_size=None, bad_images="stop"):
    """For each image path: the `top` (class name, probability) pairs, most likely first.

    An unreadable image raises `DataError` naming it, or with `bad_images="skip"` gets the
    `DataError` in its place in the list.
    """
    pretrained.check_input(image_size, len(paths))
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
    pretrained = load_pretrained(src, model_name, device="cpu")
    digest = hashlib.sha256()
    with pretrained.path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    metadata = {"model": pretrained.name, "numerics": pretrained.numerics,
                "num_classes": len(pretrained.classes), "classes": list(pretrained.classes),
                "source": str(src) if hub.is_hub_id(src) else Path(src).name,
                "source_format": pretrained.source_format,
                "source_sha256": digest.hexdigest(), "preprocessing": pretrained.preprocessing}
    export_weights(pretrained.model, dst, metadata)
    return metadata
