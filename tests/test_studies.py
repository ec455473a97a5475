"""The AGC stability study on a tiny grid: the CSV, the figure, and the claim it is about."""

import csv
from dataclasses import replace

from normfree.config import preset
from normfree.studies import agc_study, plot_agc_study


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
