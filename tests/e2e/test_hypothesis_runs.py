"""The hypothesis studies (training-set size, transfer) run on tiny grids, as functions and as
commands: their CSV columns, that accuracies are percentages, that a study resumes without
retraining what it has, and the flags refused before training."""

import csv
import shutil
from dataclasses import replace

import pytest
import torch

from normfree.analysis.hypothesis import (DATASIZE_FIELDS, TRANSFER_FIELDS, datasize_study,
                                          plot_datasize, plot_transfer, summary_table,
                                          transfer_study)
from normfree.analysis import studies
from normfree.cli import main
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


def test_study_bn_command_prints_nf_minus_bn_per_augmentation(tiny_fmnist, tmp_path, capsys,
                                                              monkeypatch):
    out = tmp_path / "bn"
    argv = ["study-bn", "--data-dir", str(tiny_fmnist), "--epochs", "1", "--batch-size", "32",
            "--seeds", "0", "--augmentation", "off", "--threads", "1", "--out-dir", str(out)]
    timed_with, time_steps = [], studies._step_times
    monkeypatch.setattr(studies, "_step_times", lambda *args: timed_with.append(
        torch.get_num_threads()) or time_steps(*args))
    threads = torch.get_num_threads()
    try:
        assert main(argv) in (0, None)
    finally:
        torch.set_num_threads(threads)  # `train` sets the run's threads for the process
    assert timed_with == [1]  # the step timing runs with --threads too, not only the training
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
