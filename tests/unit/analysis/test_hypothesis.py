"""The hypothesis studies (training-set size, transfer) on tiny grids: their CSV columns, that
accuracies are percentages, that a study resumes without retraining what it has, and the data
options they rest on (--classes, --train-per-class). Not whether the science comes out one way."""

import csv
import shutil
from dataclasses import replace

import pytest
import torch

from normfree.analysis.hypothesis import (DATASIZE_FIELDS, TRANSFER_FIELDS, datasize_study,
                                          difference_table, gap_growth_table,
                                          paired_differences, plot_datasize, plot_transfer,
                                          summary_table, transfer_gain_table, transfer_study)
from normfree.cli import main
from normfree.data.datasets import make_data
from normfree.errors import ConfigError, DataError
from normfree.training.config import preset

from helpers import write_fmnist

TINY = dict(ema_decay=0.0, eval_every=0, synthetic_size=600, val_size=100)


def read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def assert_percentages(rows, *fields):
    for row in rows:
        for field in fields:
            assert 0.0 <= float(row[field]) <= 100.0, (field, row)


def test_classes_and_train_per_class_select_balanced_relabelled_subsets():
    base = replace(preset("debug"), **TINY, seed=3)  # (synthetic images depend on the seed)
    full = make_data(base)
    some = make_data(replace(base, classes=(7, 2, 5), train_per_class=20))
    labels = some.train.labels
    assert some.classes == ("7", "2", "5") and len(labels) == 60
    assert torch.equal(torch.bincount(labels), torch.tensor([20, 20, 20]))
    assert set(some.test.labels.tolist()) == {0, 1, 2}
    # the held-out set is the same images whatever the subset (restricted to the classes)
    assert torch.equal(some.val.labels, torch.tensor(
        [[7, 2, 5].index(c) for c in full.val.labels.tolist() if c in (7, 2, 5)]))
    assert torch.equal(make_data(replace(base, train_per_class=20)).val.images,
                       full.val.images)
    with pytest.raises(DataError, match="--train-per-class 1000: class"):
        make_data(replace(base, train_per_class=1000))
    with pytest.raises(DataError, match="classes 0-9"):
        make_data(replace(base, classes=(3, 12)))
    with pytest.raises(ConfigError, match="--classes"):
        replace(base, classes=(3, 3))


def test_datasize_study_writes_rows_resumes_and_plots(tmp_path):
    base = replace(preset("debug"), **TINY)
    out = tmp_path / "datasize.csv"
    args = (base, ["nfnet_tiny", "nfnet_tiny_bn"], [5, 20], ["on", "off"], [0], 4, out)
    rows = datasize_study(*args, progress=lambda line: None)
    fields, written = read(out)
    assert fields == DATASIZE_FIELDS and len(written) == len(rows) == 8
    assert {(r["model"], r["augmentation"], r["train_images"]) for r in written} == {
        (m, a, n) for m in ("nfnet_tiny", "nfnet_tiny_bn") for a in ("on", "off")
        for n in ("50", "200")}
    assert_percentages(written, "train_top1", "test_top1")
    for row in written:
        assert float(row["gap"]) == pytest.approx(float(row["train_top1"])
                                                  - float(row["test_top1"]), abs=1e-3)
        assert int(row["steps"]) == 4
    trained = []
    again = datasize_study(*args, progress=trained.append)  # resumed: nothing left to run
    assert trained == [] and again == rows
    table = summary_table(again, ["model", "augmentation", "train_images"], ["test_top1", "gap"])
    assert table.splitlines()[2].startswith("| nfnet_tiny | off | 50 |")
    assert len(table.splitlines()) == 2 + 8 and table.count("| 1 |") == 8  # one seed each
    plot_datasize(again, tmp_path / "datasize.png", "test")
    assert (tmp_path / "datasize.png").stat().st_size > 10_000


def test_transfer_study_pretrains_once_and_compares_with_scratch(tmp_path):
    base = replace(preset("debug"), **TINY)
    args = (base, ["nfnet_tiny", "nfnet_tiny_bn"], [5], [0], 6, 4, tmp_path,
            tmp_path / "transfer.csv")
    rows = transfer_study(*args, progress=lambda line: None)
    fields, written = read(tmp_path / "transfer.csv")
    assert fields == TRANSFER_FIELDS and len(written) == 4
    assert {(r["model"], r["init"]) for r in written} == {
        (m, i) for m in ("nfnet_tiny", "nfnet_tiny_bn") for i in ("pretrained", "scratch")}
    assert_percentages(written, "train_top1", "test_top1")
    for model in ("nfnet_tiny", "nfnet_tiny_bn"):
        assert (tmp_path / "pretrain" / f"{model}-s0" / "model.safetensors").exists()
    lines = []
    transfer_study(*args, progress=lines.append)
    assert lines == []  # neither pretraining nor fine-tuning runs again
    shutil.rmtree(tmp_path / "pretrain")  # a CSV merged from elsewhere: nothing left to train
    transfer_study(*args, progress=lines.append)
    assert lines == [] and not (tmp_path / "pretrain").exists()
    plot_transfer(rows, tmp_path / "transfer.png", "test")
    assert (tmp_path / "transfer.png").stat().st_size > 10_000


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


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory):
    return write_fmnist(tmp_path_factory.mktemp("fmnist"), n_train=5200, n_test=100)


@pytest.mark.parametrize("command, extra, stem, fields", [
    ("study-datasize", ["--per-class", "3", "--augmentation", "off"], "datasize",
     DATASIZE_FIELDS),
    ("study-transfer", ["--shots", "3", "--pretrain-steps", "2"], "transfer", TRANSFER_FIELDS),
])
def test_study_commands_run_a_tiny_grid_and_resume(command, extra, stem, fields, tiny_fmnist,
                                                   tmp_path, capsys):
    out = tmp_path / "study"
    argv = [command, "--data-dir", str(tiny_fmnist), "--seeds", "0", "--steps", "2",
            "--out-dir", str(out), *extra]
    assert main(argv) in (0, None)
    header, rows = read(out / f"{stem}.csv")
    assert header == fields and len(rows) >= 2
    assert_percentages(rows, "train_top1", "test_top1")
    assert (out / f"{stem}.png").exists()
    assert main(argv) == 2 and "--force" in capsys.readouterr().err  # no silent overwrite
    assert main(argv + ["--resume"]) in (0, None)
    assert len(read(out / f"{stem}.csv")[1]) == len(rows)


def test_study_bn_command_prints_nf_minus_bn_per_augmentation(tiny_fmnist, tmp_path, capsys):
    out = tmp_path / "bn"
    argv = ["study-bn", "--data-dir", str(tiny_fmnist), "--epochs", "1", "--batch-size", "32",
            "--seeds", "0", "--augmentation", "off", "--threads", "1", "--out-dir", str(out)]
    threads = torch.get_num_threads()
    try:
        assert main(argv) in (0, None)
        assert torch.get_num_threads() == 1  # for the step timing too, not only the training
    finally:
        torch.set_num_threads(threads)
    header, rows = read(out / "nf_vs_bn_b32.csv")
    finished = [r for r in rows if r["test_top1"]]
    assert {r["model"] for r in finished} == {"nfnet_s0", "nfnet_s0_bn"}
    assert_percentages(finished, "train_top1", "test_top1")
    printed = capsys.readouterr().out
    for value in ("test_top1", "gap", "seconds"):
        assert f"| augmentation | {value}: nfnet_s0 − nfnet_s0_bn | seeds |" in printed
    assert "| off |" in printed and "| 1 | one seed |" in printed


@pytest.mark.parametrize("argv, message", [
    (["study-datasize", "--resume"], "--resume continues a study: give its --out-dir"),
    (["study-datasize", "--augmentation", "maybe"], "--augmentation takes on and/or off"),
    (["study-transfer", "--model", "nfnet_f0"], "no batch-norm twin"),
])
def test_study_commands_refuse_bad_flags_before_training(argv, message, tmp_path, capsys):
    assert main(argv + ([] if "--resume" in argv else ["--out-dir", str(tmp_path / "o")])) == 2
    assert message in capsys.readouterr().err
