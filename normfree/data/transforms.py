"""Image transforms: per-image training augmentation and the evaluation preprocessing."""

from torchvision.transforms import v2

from . import reference_pipeline


def small_image_transform(size, crop_padding, flip, randaugment, random_erasing):
    """Per-image training augmentation for small greyscale/colour images (uint8 in and out).
    In-memory data uses it with RandAugment only: otherwise `BatchAugment` draws the same
    distribution for a whole batch at once."""
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


def image_transform(crop, resize=None, in_chans=3, interpolation="bicubic", resize_mode="squash"):
    """PIL image → uint8 CHW tensor: the whole image resized to `resize`² ("squash"), or its
    shorter side to `resize` ("shorter", timm's usual), then centre crop `crop`; or, with
    "reference", DeepMind's TensorFlow resize-crop (float32 out, `reference_pipeline`).

    With `resize = crop + 32`, "squash" and bicubic this is the reference's evaluation
    preprocessing with torchvision's antialiased resize (docs/architecture.md §11);
    normalisation happens later, on the model's device.
    """
    resize = resize or crop
    if resize_mode == "reference":
        return reference_pipeline.eval_transform(crop, resize - crop)
    mode = v2.InterpolationMode(interpolation)
    return v2.Compose([v2.Grayscale(1) if in_chans == 1 else v2.RGB(),
                       v2.Resize((resize, resize) if resize_mode == "squash" else resize,
                                 interpolation=mode, antialias=True),
                       v2.CenterCrop(crop), v2.PILToTensor()])


def folder_train_transform(size, flip, randaugment, random_erasing):
    """PIL image → augmented uint8 CHW tensor: random-resized crop to `size`, then flips,
    RandAugment and random erasing as asked."""
    steps = [v2.RGB(), v2.RandomResizedCrop(size, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment(*randaugment))
    steps.append(v2.PILToTensor())
    if random_erasing:
        steps.append(v2.RandomErasing(random_erasing, value=0))
    return v2.Compose(steps)
