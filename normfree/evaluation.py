"""Evaluation in one place: top-1/top-5 counting and the one loop that runs a model over
batches, whether they come from a run's dataset, an image folder or a checkpoint's data
(`normfree.training.checkpoint_eval.evaluate_checkpoint` restores the model and calls
`evaluate`)."""

import torch
import torch.nn.functional as F
from .progress import ProgressBar

from .data.folders import FolderBatches, ImageFiles, flat_samples, folder_samples
from .errors import DataError
from .runtime import autocast


def top1_top5_hits(logits, labels):
    """How many labels are the top prediction, and how many are among the top 5."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return ((top5[:, 0] == labels).sum().item(),
            (top5 == labels[:, None]).any(dim=1).sum().item())


@torch.no_grad()
def evaluate(model, batches, normalize, *, tta_flip=False, precision="fp32",
             memory_format=torch.contiguous_format, progress=False, what="images",
             sum_across=None):
    """Top-1 and top-5 accuracy (%), mean cross-entropy and image count over `batches` of
    (uint8 images, labels); `normalize` turns the images into the model's input.

    With `tta_flip`, logits are averaged over each image and its mirror image. Data-parallel
    processes each evaluate their share of the images (`Batches.share`) and `sum_across` (a
    function summing a list of numbers over the processes) adds up their counts. `what` names
    the images in the error when none is readable ("no readable {what}").
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss = count = 0
    bar = ProgressBar(batches, desc="eval", leave=False, disable=not progress or None)
    for images, labels in bar:
        images = normalize(images.to(device)).contiguous(memory_format=memory_format)
        labels = labels.to(device)
        with autocast(device, precision):
            logits = model(images).float()
            if tta_flip:
                logits = (logits + model(images.flip(3)).float()) / 2
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        hits1, hits5 = top1_top5_hits(logits, labels)
        correct1, correct5 = correct1 + hits1, correct5 + hits5
        count += len(labels)
    model.train(was_training)
    totals = [correct1, correct5, loss, count, len(getattr(batches, "skipped", ()))]
    correct1, correct5, loss, count, skipped = sum_across(totals) if sum_across else totals
    if not count:
        raise DataError(f"no readable {what}")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count,
            "loss": loss / count, "images": int(count),
            "skipped": int(skipped)}  # unreadable files of a folder


def protocol(crop, resize=None, tta_flip=False, weights=None, precision=None):
    """How an accuracy was measured, stored beside it: crop size (px), resize before the
    centre crop (None: images already at size), flip TTA, which weights ("raw", "ema") and
    the autocast precision (None: not recorded)."""
    return {"crop": crop, "resize": resize, "tta_flip": tta_flip, "weights": weights,
            "precision": precision}


def protocol_text(measured):
    """`protocol` in words, e.g. "28 px, flip TTA, ema weights"."""
    resize = (f" (centre crop of {measured['resize']})"
              if measured.get("resize") not in (None, measured["crop"]) else "")
    return ", ".join([f"{measured['crop']} px{resize}",
                      "flip TTA" if measured["tta_flip"] else "no TTA"]
                     + ([f"{measured['weights']} weights"] if measured.get("weights") else [])
                     + ([measured["precision"]] if measured.get("precision") else []))


def class_index(folder_classes, weights_classes, root):
    """Folder class → weights' class index: by name when the names match, else by position."""
    if set(folder_classes) <= set(weights_classes):
        return {c: weights_classes.index(c) for c in folder_classes}
    if len(folder_classes) == len(weights_classes):
        return {c: i for i, c in enumerate(folder_classes)}  # sorted folder names, e.g. wnids
    raise DataError(f"{root}: {len(folder_classes)} class folders, but the weights have "
                    f"{len(weights_classes)} classes and the folder names are not among them")


def evaluate_folder(model, data_dir, *, classes, transform, normalize, labels_file=None,
                    batch_size=50, bad_images="skip", progress=True, tta_flip=False):
    """`evaluate` on an ImageFolder tree (class folders named as `classes`, or in their order),
    or on a flat folder labelled by `labels_file`."""
    if labels_file:
        samples = flat_samples(data_dir, labels_file, classes)
    else:
        samples, folder_classes = folder_samples(data_dir)
        index = class_index(folder_classes, classes, data_dir)
        samples = [(path, index[folder_classes[label]]) for path, label in samples]
    batches = FolderBatches(ImageFiles(samples, transform), batch_size, bad_images=bad_images)
    return evaluate(model, batches, normalize, tta_flip=tta_flip, progress=progress,
                    what=f"images in {data_dir}")
