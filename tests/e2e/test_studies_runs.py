"""The AGC stability study and NF against BN on tiny grids: the CSV, the figure, and the claim
each is about."""

import csv
from dataclasses import replace

import pytest

from normfree.analysis.studies import agc_study, nf_vs_bn, plot_agc_study, plot_nf_vs_bn
from normfree.training.config import preset


def test_agc_study_grid_records_divergence_and_accuracy(tmp_path):
    base = replace(preset("debug"), epochs=4, ema_decay=0.0)
    rows = agc_study(base, [32], [0.4, 40.0], [0.0, 0.04], tmp_path / "agc.csv",
                     progress=lambda line: None)
    assert len(rows) == 4
    with open(tmp_path / "agc.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    cell = {(r["lr"], r["clip_factor"]): r for r in rows}
    assert cell[(5.0, 0.0)]["diverged_at_step"] is not None  # 40 per 256 · 32: NaN without AGC
    assert cell[(5.0, 0.04)]["diverged_at_step"] is None      # ... and AGC holds it
    assert cell[(0.05, 0.0)]["val_top1"] > 20.0 and cell[(0.05, 0.04)]["val_top1"] > 20.0
    plot_agc_study(rows, tmp_path / "agc.png", "test")
    assert (tmp_path / "agc.png").stat().st_size > 10_000


def test_nf_vs_bn_trains_both_and_times_their_steps(tmp_path, monkeypatch):
    base = replace(preset("debug"), epochs=2, ema_decay=0.0)
    rows = nf_vs_bn(base, tmp_path / "bn.csv", seeds=[0], augmentations=["on", "off"],
                    progress=lambda line: None)
    runs = [(m, a) for a in ("on", "off") for m in ("nfnet_tiny", "nfnet_tiny_bn")]
    assert [(r["model"], r["augmentation"], r["epoch"]) for r in rows] == [
        (m, a, e) for m, a in runs for e in (1, 2)]
    for model, augmentation in runs:
        first, last = [r for r in rows if (r["model"], r["augmentation"]) == (model, augmentation)]
        assert 0 < first["seconds"] < last["seconds"]  # cumulative training time
        assert first["test_top1"] is None and 0 <= last["test_top1"] <= 100
        assert 0 <= last["train_top1"] <= 100
        assert last["gap"] == pytest.approx(last["train_top1"] - last["test_top1"], abs=1e-3)
        assert last["step_ms"] > 0 and last["peak_rss_mb"] > 100
    with open(tmp_path / "bn.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 8
    again = []
    monkeypatch.setattr("normfree.analysis.studies._step_times", None)  # must not be called
    monkeypatch.setattr("normfree.analysis.studies.train_peak_memory", None)
    assert nf_vs_bn(base, tmp_path / "bn.csv", seeds=[0], augmentations=["on", "off"],
                    progress=again.append)[-1] == rows[-1]
    assert again == []  # every run is in the CSV already: nothing trained, nothing timed
    other_seed = [{**r, "seed": 1} for r in rows]  # several seeds: one line of means per run
    plot_nf_vs_bn(rows + other_seed, tmp_path / "bn.png", "test")
    assert (tmp_path / "bn.png").stat().st_size > 10_000
