"""Progressive resizing (`--small-image-scale 0.7`: 28 → 20 px): the first part of a run trains
on batches downscaled by that factor, which cost a step about in proportion to their pixels,
and the rest at full size. Early on the network learns coarse features that small images show
as well, so a run of fixed wall-clock time does more steps for the same accuracy
(docs/results.md).

A step is small while the learning rate's cosine has covered less than `--small-image-until`
of its way (the warm-up is small too). That progress only grows, also when a budgeted run
plans its length again (budget.py), so a run never goes back to small images, and a resumed
run switches at the same step as an uninterrupted one.
"""

import math

import torch.nn.functional as F

from .optim import cosine_progress, step_at_progress


def downscaled(images, size):
    """`images` (N, C, H, W) resized to `size` × `size`: bilinear with antialiasing, which
    widens the filter by the scale so that detail too fine for `size` is averaged away instead
    of sampled into aliasing."""
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def is_small(cfg, step, warmup_steps, total_steps, bend=None):
    """Whether the step after `step` trains on small images (`total_steps` None or infinite
    while a budgeted run has not planned yet)."""
    if not cfg.small_image_scale:
        return False
    if step < warmup_steps or not total_steps or math.isinf(total_steps):
        return True
    return cosine_progress(step, warmup_steps, total_steps, bend) < cfg.small_image_until


def small_size(cfg, full_size):
    """The side of a small batch's images: `full_size` scaled by `small_image_scale`."""
    return max(1, round(cfg.small_image_scale * full_size))


def pixel_share(size, full_size):
    """What a step on `size` images costs, in steps on `full_size` images, taken as its share
    of the pixels. Small steps cost somewhat more than that (docs/benchmarks.md, "A 20 px step
    against a 28 px one"), so before the switch the plan errs on the short side, the safe side
    of a budget; the plans after it time full-size steps."""
    return (size / full_size) ** 2


def full_size_steps(cfg, image_size, step, total, warmup_steps, bend=None):
    """What the steps after `step` up to `total` cost, in full-size steps. The small ones are
    those whose cosine progress is short of `small_image_until` (`step_at_progress`: it runs
    linearly from the warm-up's end, or from `bend`, to 1 at `total`)."""
    steps = total - step
    if not cfg.small_image_scale:
        return steps
    first_full = step_at_progress(cfg.small_image_until, warmup_steps, total, bend)
    small = min(max(math.ceil(first_full) - step, 0), steps)
    return steps - small * (1.0 - pixel_share(small_size(cfg, image_size), image_size))
