"""DeepMind Haiku pickles: layout mapping, a stand-in FlatMapping, and refusal of code."""

import pickle
import sys
import types

import numpy as np
import pytest
import torch

from normfree import create_model, load_weights
from normfree.errors import CheckpointError
from normfree.weights.haiku import UnsafeWeightsError, read_haiku_file

from helpers import to_haiku


def test_module_count_matches_spec(f0):
    assert len(to_haiku(f0)) == 94


@pytest.mark.parametrize("with_flat_mapping", [False, True])
def test_f0_haiku_file_gives_the_same_logits(f0, f0_haiku_file, tmp_path, with_flat_mapping,
                                             request):
    path = f0_haiku_file
    if with_flat_mapping:
        path = tmp_path / "F0_haiku.npz"
        path.write_bytes(pickle.dumps(to_haiku(f0, request.getfixturevalue("fake_haiku")),
                                      protocol=4))
        # the loader must not need haiku: drop the stand-in before loading
        for name in ("haiku", "haiku._src", "haiku._src.data_structures"):
            sys.modules.pop(name)
    model = load_weights(create_model("nfnet_f0"), path).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = f0(x), model(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-6


def test_wrong_variant_is_named(f0_haiku_file):
    model = create_model("nfnet_f1")
    with pytest.raises(CheckpointError, match="nfnet_f0"):
        load_weights(model, f0_haiku_file)


class _Evil:
    def __reduce__(self):
        import os
        return os.system, ("touch EVIL_MARKER",)


class _Eval:
    def __reduce__(self):
        import builtins
        return builtins.eval, ("__import__('pathlib').Path('EVIL_MARKER').touch()",)


@pytest.mark.parametrize("payload", [_Evil(), _Eval()])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": payload}}))
    with pytest.raises(UnsafeWeightsError, match="refusing to load"):
        read_haiku_file(path)
    assert not (tmp_path / "EVIL_MARKER").exists()


def test_dill_array_helper_only_calls_numpy(tmp_path, monkeypatch):
    import os
    dill = types.ModuleType("dill._dill")

    def _create_array(f, args, state, npdict=None):
        raise AssertionError("the real helper must never be called")
    _create_array.__module__ = "dill._dill"
    _create_array.__qualname__ = "_create_array"
    dill._create_array = _create_array
    monkeypatch.setitem(sys.modules, "dill", types.ModuleType("dill"))
    monkeypatch.setitem(sys.modules, "dill._dill", dill)

    class DillArray:
        def __init__(self, array, f=np._core.multiarray._reconstruct):
            self.array, self.f = array, f

        def __reduce__(self):
            reduced = self.array.__reduce__()
            return _create_array, (self.f, reduced[1], reduced[2], None)

    good = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "dill.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": DillArray(good)}}))
    assert np.array_equal(read_haiku_file(path)["NFNet/~/linear"]["w"], good)
    path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": DillArray(good, os.system)}}))
    with pytest.raises(UnsafeWeightsError):
        read_haiku_file(path)


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "cut.npz"
    path.write_bytes(pickle.dumps({"a": {"w": np.zeros(100, np.float32)}})[:50])
    with pytest.raises(CheckpointError, match="cut.npz"):
        read_haiku_file(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="expected"):
        read_haiku_file(path)


# --- an independent NumPy evaluation in the reference's NHWC / HWIO layout --------------------

GAMMA_GELU = 1.7015043497085571


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))) * GAMMA_GELU


def np_ws_conv(x, p, stride=1, groups=1):
    """TF 'SAME' conv of NHWC x with a standardised HWIO kernel, in float64."""
    w = p["w"].astype(np.float64)
    kh, kw, cin, cout = w.shape
    mean = w.mean(axis=(0, 1, 2))
    var = w.var(axis=(0, 1, 2))
    w = p["gain"] * (w - mean) / np.sqrt(np.maximum(kh * kw * cin * var, 1e-4))
    n, h, wd, _ = x.shape
    out_h, out_w = -(-h // stride), -(-wd // stride)
    pad_h = max((out_h - 1) * stride + kh - h, 0)
    pad_w = max((out_w - 1) * stride + kw - wd, 0)
    x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                   (0, 0)))
    out = np.zeros((n, out_h, out_w, cout))
    group_out = cout // groups
    for g in range(groups):
        xs = x[..., g * cin:(g + 1) * cin]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride, :]
                out[..., g * group_out:(g + 1) * group_out] += patch @ w[i, j, :, g * group_out:
                                                                         (g + 1) * group_out]
    return out + p["bias"]


def test_stem_and_first_block_match_numpy_reference(f0, f0_haiku_file):
    params = to_haiku(f0)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3))  # NHWC
    h = np_ws_conv(x, params["NFNet/~/stem_conv0"], stride=2)
    h = np_ws_conv(np_gelu(h), params["NFNet/~/stem_conv1"])
    h = np_ws_conv(np_gelu(h), params["NFNet/~/stem_conv2"])
    stem = np_ws_conv(np_gelu(h), params["NFNet/~/stem_conv3"], stride=2)
    block = {k.split("/~/", 2)[-1]: v for k, v in params.items()
             if k.startswith("NFNet/~/nf_block/~/")}
    a = np_gelu(stem) * 1.0  # β of the first block
    shortcut = np_ws_conv(a, block["conv_shortcut"])
    out = np_ws_conv(a, block["conv0"])
    groups = f0.stages[0][0].conv2.groups
    out = np_ws_conv(np_gelu(out), block["conv1"], groups=groups)
    out = np_ws_conv(np_gelu(out), block["conv1b"], groups=groups)
    out = np_ws_conv(np_gelu(out), block["conv2"])
    fc1, fc2 = block["squeeze_excite/~/linear"], block["squeeze_excite/~/linear_1"]
    s = np.maximum(out.mean(axis=(1, 2)) @ fc1["w"] + fc1["b"], 0) @ fc2["w"] + fc2["b"]
    out = 2 * (1 / (1 + np.exp(-s)))[:, None, None, :] * out
    skip_gain = params["NFNet/~/nf_block"]["skip_gain"]
    expected_block = out * skip_gain * 0.2 + shortcut

    model = load_weights(create_model("nfnet_f0"), f0_haiku_file).eval()  # HWIO → OIHW
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(0, 3, 1, 2)).float()
        got_stem = model.stem(t)
        got_block = model.stages[0][0](got_stem)
    for got, expected in ((got_stem, stem), (got_block, expected_block)):
        got = got.permute(0, 2, 3, 1).double().numpy()
        assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-5
