"""Parity with timm's dm_nfnet_* (random weights, random non-zero skip gains)."""

import pytest
import torch

from normfree import create_model, load_weights
from normfree.errors import CheckpointError

from helpers import randomised_timm, relative_error

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_f0():
    return randomised_timm(timm, "dm_nfnet_f0")


@pytest.mark.parametrize("size", [64, 65])
def test_f0_timm_numerics_match_timm_logits(timm_f0, size):
    model = load_weights(create_model("nfnet_f0", numerics="timm"), timm_f0.state_dict()).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        err = relative_error(model(x), timm_f0(x))
    print(f"nfnet_f0 {size}px timm-numerics relative error {err:.2e}")
    assert err < 1e-5


def test_deepmind_numerics_differ_by_gelu_and_eps(timm_f0):
    model = load_weights(create_model("nfnet_f0"), timm_f0.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = relative_error(model(x), timm_f0(x))
    print(f"nfnet_f0 deepmind-numerics vs timm relative difference {err:.3f}")
    assert 0.005 < err < 0.1  # a few percent: erf vs tanh GELU, eps added vs clamped


def test_files_load_from_pth_and_safetensors(timm_f0, tmp_path):
    from safetensors.torch import save_file
    torch.save(timm_f0.state_dict(), tmp_path / "f0.pth")
    save_file({k: v.contiguous() for k, v in timm_f0.state_dict().items()},
              tmp_path / "f0.safetensors")
    a = load_weights(create_model("nfnet_f0", numerics="timm"), tmp_path / "f0.pth")
    b = load_weights(create_model("nfnet_f0", numerics="timm"), tmp_path / "f0.safetensors")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_wrong_variant_names_it_and_leaves_model_unchanged(timm_f0):
    model = create_model("nfnet_f1")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(model, timm_f0.state_dict())
    message = str(info.value)
    assert "nfnet_f0" in message and "missing" in message and "(1, 2, 6, 3)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_misshaped_and_foreign_files(tmp_path):
    model = create_model("nfnet_tiny")
    state = model.state_dict()
    state["head.fc.weight"] = torch.zeros(5, 64)
    state["head.fc.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match="mis-shaped.*head.fc.weight"):
        load_weights(model, state)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_weights(model, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(model, tmp_path / "missing.pth")
