import sys

import matplotlib
import pytest
import torch

from normfree import block_betas, create_model
from normfree.analysis.spp import paper_comparison, plot, signal_stats, write_curves_csv


@pytest.fixture(scope="module")
def curves():
    return paper_comparison(depth=50, image_size=128, batch_size=8)


def test_forward_is_unchanged_and_hooks_are_removed():
    model = create_model("nfnet_tiny").eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    records = signal_stats(model, x)
    assert len(records) == 1 + 2  # stem + one record per block
    assert torch.equal(model(x), before)
    assert all(not m._forward_hooks for m in model.modules())


def test_scaled_ws_variance_follows_alpha_bookkeeping(curves):
    records = curves["NF-ResNet, Scaled WS"]
    depths = (3, 4, 6, 3)
    betas = block_betas(depths, 0.2) + [None]
    for block, record in enumerate(records[1:]):
        # after block i the variance is what block i + 1 is told to expect (1/β²), or the
        # running value after the last block
        if betas[block + 1] is not None:
            expected = 1 / betas[block + 1] ** 2
            assert record["avg_var"] == pytest.approx(expected, rel=0.1), record["name"]
        assert record["avg_sq_mean"] < 0.02, record["name"]
        if not record["name"].startswith("stages.3"):  # 4×4 maps: 3×3 zero padding shrinks it
            assert record["residual_var"] == pytest.approx(1.0, rel=0.15), record["name"]


def test_without_ws_the_mean_shift_is_large_and_grows_with_depth(curves):
    plain = {r["name"]: r["avg_sq_mean"] for r in curves["NF-ResNet, He-init convs, no WS"]}
    ws = {r["name"]: r["avg_sq_mean"] for r in curves["NF-ResNet, Scaled WS"]}
    assert all(plain[name] > 100 * ws[name] for name in ws if name != "stem")
    for stage, depth in enumerate((3, 4, 6, 3)):  # each block adds a random per-channel mean
        assert plain[f"stages.{stage}.{depth - 1}"] > plain[f"stages.{stage}.0"], stage


def test_bn_relu_ordering_shows_mean_shift_relu_bn_does_not(curves):
    bn_relu = curves["BN-ReLU-conv (BN ResNet)"]
    relu_bn = curves["ReLU-BN-conv (BN ResNet)"]
    ratio = [a["avg_sq_mean"] / a["avg_var"] for a in bn_relu[1:]]
    ratio_relu_bn = [b["avg_sq_mean"] / b["avg_var"] for b in relu_bn[1:]]
    assert max(ratio) > 0.1
    assert max(ratio_relu_bn) < 0.05


def test_csv_and_png(curves, tmp_path):
    write_curves_csv(curves, tmp_path / "spp.csv")
    plot(curves, tmp_path / "spp.png")
    lines = (tmp_path / "spp.csv").read_text().splitlines()
    assert len(lines) == 1 + sum(len(r) for r in curves.values())
    assert (tmp_path / "spp.png").stat().st_size > 10_000


def test_the_study_leaves_the_random_state_and_matplotlib_as_they_were(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("library code chose a matplotlib backend")
    monkeypatch.setattr(matplotlib, "use", refuse)
    state = torch.get_rng_state()
    curves = paper_comparison(depth=26, image_size=32, batch_size=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert curves == paper_comparison(depth=26, image_size=32, batch_size=2)  # still seeded
    plot(curves, tmp_path / "spp.png")
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()  # no figure left registered with pyplot
