"""The deeper variants' parity: NFNet-F1 (24 blocks) loads timm's dm_nfnet_f1 weights with
timm's logits, and is inferred from a Haiku file alone. The same code paths as the unit tier's
F0 tests, here because F1 costs seconds a test (the unit tier's time: Makefile, test-fast)."""

import pickle

import pytest
import torch

from normfree import create_model, load_pretrained, load_weights

from helpers import randomised_nfnet, randomised_timm, relative_error, to_haiku


def test_deeper_variant_matches_timm():
    timm = pytest.importorskip("timm")
    reference = randomised_timm(timm, "dm_nfnet_f1", seed=1)
    model = load_weights(create_model("nfnet_f1", numerics="timm"), reference.state_dict()).eval()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(model(x), reference(x)) < 1e-5


def test_deeper_variant_is_inferred_from_a_haiku_file(tmp_path, fake_haiku):
    """F1 (24 blocks, 178 modules): `load_pretrained` finds the variant from the file alone."""
    f1 = randomised_nfnet("nfnet_f1", 1)
    modules = to_haiku(f1, fake_haiku)
    assert len(modules) == 4 + 7 * 24 + 4 + 2
    path = tmp_path / "F1_haiku.npz"
    path.write_bytes(pickle.dumps(modules, protocol=4))
    pretrained = load_pretrained(path, device="cpu")
    assert pretrained.name == "nfnet_f1" and pretrained.numerics == "deepmind"
    assert pretrained.source_format == "haiku" and len(pretrained.classes) == 1000
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = f1(x), pretrained.model(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-6
