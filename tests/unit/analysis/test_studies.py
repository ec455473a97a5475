"""The studies' base recipe (the studies themselves: tests/e2e/test_studies_runs.py)."""

from normfree.analysis.studies import default_base
from normfree.training.config import preset


def test_studies_keep_nfnet_s0_whatever_model_the_fmnist_preset_trains():
    # the preset's model has no batch-norm twin; the studies in docs/results.md are of nfnet_s0
    assert preset("fmnist").model == "nfnet_s0_dense"
    base = default_base(epochs=3)
    assert (base.model, base.epochs, base.ema_decay, base.compile) == ("nfnet_s0", 3, 0.0, False)
    assert base.time_budget is None
