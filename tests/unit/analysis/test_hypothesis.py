"""The hypothesis studies' pieces: the data options they rest on (--classes, --train-per-class)
and the statistics of their tables (paired differences, gap growth, transfer gain). The
studies run on tiny grids in tests/e2e/test_hypothesis_runs.py. Not whether the science comes
out one way."""

from dataclasses import replace

import pytest
import torch

from normfree.analysis.hypothesis import (difference_table, gap_growth_table,
                                          paired_differences, transfer_gain_table)
from normfree.data.datasets import make_data
from normfree.data.spec import DataSpec
from normfree.errors import ConfigError, DataError
from normfree.training.config import preset
from normfree.training.specs import spec_from

def data_of(cfg):
    return make_data(spec_from(DataSpec, cfg))


TINY = dict(ema_decay=0.0, eval_every=0, synthetic_size=600, val_size=100)


def test_classes_and_train_per_class_select_balanced_relabelled_subsets():
    base = replace(preset("debug"), **TINY, seed=3)  # (synthetic images depend on the seed)
    full = data_of(base)
    some = data_of(replace(base, classes=(7, 2, 5), train_per_class=20))
    labels = some.train.labels
    assert some.classes == ("7", "2", "5") and len(labels) == 60
    assert torch.equal(torch.bincount(labels), torch.tensor([20, 20, 20]))
    assert set(some.test.labels.tolist()) == {0, 1, 2}
    # the held-out set is the same images whatever the subset (restricted to the classes)
    assert torch.equal(some.val.labels, torch.tensor(
        [[7, 2, 5].index(c) for c in full.val.labels.tolist() if c in (7, 2, 5)]))
    assert torch.equal(data_of(replace(base, train_per_class=20)).val.images,
                       full.val.images)
    with pytest.raises(DataError, match="train_per_class 1000: class") as too_many:
        data_of(replace(base, train_per_class=1000))
    assert too_many.value.fields == ("train_per_class",)  # the command line names its flag
    with pytest.raises(DataError, match="classes 0-9"):
        data_of(replace(base, classes=(3, 12)))
    with pytest.raises(ConfigError, match="--classes"):
        replace(base, classes=(3, 3))


def datasize_rows(gaps):
    """Study rows whose gap is given per (model, augmentation, images, seed)."""
    return [dict(model=m, augmentation=a, train_images=n, seed=seed, gap=gap, test_top1=90.0)
            for (m, a, n, seed), gap in gaps.items()]


def test_paired_differences_pair_by_seed_and_judge_against_the_seed_noise():
    steady = {("nf", "on", 100, s): 5.0 + d for s, d in enumerate([1.0, 1.1, 0.9])}
    noisy = {("nf", "off", 100, s): 5.0 + d for s, d in enumerate([2.0, -1.5, 0.4])}
    bn = {("bn", a, 100, s): 5.0 for a in ("on", "off") for s in range(3)}
    rows = datasize_rows({**steady, **noisy, **bn, ("nf", "on", 100, 7): 9.0})  # seed 7: no BN
    diffs = paired_differences(rows, ["augmentation"], "gap", "nf", "bn")
    mean, std, n, exceeds = diffs[("on",)]
    assert (mean, n, exceeds) == (pytest.approx(1.0), 3, True) and std == pytest.approx(0.1)
    mean, std, n, exceeds = diffs[("off",)]
    # |0.3| < t(2) · 1.75 / √3 = 4.303 · 1.01: inside the noise
    assert mean == pytest.approx(0.3) and std == pytest.approx(1.7521, abs=1e-4)
    assert exceeds is False
    one = paired_differences(rows[:1] + rows[6:7], ["augmentation"], "gap", "nf", "bn")
    assert one[("on",)][2:] == (1, None)
    table = difference_table(rows, ["augmentation"], "gap", "nf", "bn")
    assert "| off | +0.30 ± 1.75 | 3 | no |" in table and "| on | +1.00 ± 0.10 | 3 | yes |" in table


def test_gap_growth_and_transfer_gain_are_differences_of_differences():
    # NF's gap exceeds BN's by 3 + seed at 1,000 images and by 1 at 54,000: grows by 2 + seed
    gaps = {}
    for seed in range(3):
        gaps.update({("nf", "on", 1000, seed): 10.0 + seed, ("bn", "on", 1000, seed): 7.0,
                     ("nf", "on", 54000, seed): 2.0, ("bn", "on", 54000, seed): 1.0})
    table = gap_growth_table(datasize_rows(gaps), "nf", "bn")
    assert "(NF − BN gap) − (same at 54000)" in table
    assert "| on | 1000 | +3.00 ± 1.00 | 3 | yes |" in table
    assert gap_growth_table(datasize_rows(gaps), "nf", "absent") == "(no cell has both models yet)"
    # NF gains 4 points from pretraining at 10 shots, BN 1 + seed: NF − BN = 2 ± 1
    rows = [dict(model=m, init=i, shots=10, seed=s, test_top1=70.0 + gain)
            for s in range(3)
            for m, i, gain in [("nf", "pretrained", 4.0), ("nf", "scratch", 0.0),
                               ("bn", "pretrained", 1.0 + s), ("bn", "scratch", 0.0)]]
    table = transfer_gain_table(rows, "nf", "bn")
    assert "| nf | 10 | +4.00 ± 0.00 | 3 | yes |" in table
    assert "| bn | 10 | +2.00 ± 1.00 | 3 | no |" in table  # 2 < t(2) · 1 / √3 = 2.48
    assert "| 10 | +2.00 ± 1.00 | 3 | no |" in table
