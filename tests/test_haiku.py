"""DeepMind Haiku pickles: layout mapping, a stand-in FlatMapping, and refusal of code."""

import pickle
import sys
import types

import numpy as np
import pytest
import torch

from normfree import create_model, load_weights
from normfree.checkpoint import CheckpointError
from normfree.haiku import UnsafeWeightsError, read_haiku_file

_INNER = {"conv1": "conv0", "conv2": "conv1", "conv2b": "conv1b", "conv3": "conv2",
          "downsample.conv": "conv_shortcut", "se.fc1": "squeeze_excite/~/linear",
          "se.fc2": "squeeze_excite/~/linear_1"}


def to_haiku(model, mapping=dict):
    """The reference's {module: {param: array}} for a normfree NFNet, written independently of
    normfree.haiku: HWIO kernels, [in, out] linear weights, Haiku module names."""
    depths = model.cfg.depths
    block_index = {}
    for s, depth in enumerate(depths):
        for b in range(depth):
            block_index[f"stages.{s}.{b}"] = len(block_index)
    params = {}
    for key, tensor in model.state_dict().items():
        module, name = key.rsplit(".", 1)
        array = tensor.detach().numpy()
        if array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)  # OIHW → HWIO
        elif array.ndim == 2:
            array = array.T
        if module.startswith("stem.conv"):
            path = f"NFNet/~/stem_conv{int(module[-1]) - 1}"
        elif module == "final_conv":
            path = "NFNet/~/final_conv"
        elif module == "head.fc":
            path = "NFNet/~/linear"
        else:
            parts = module.split(".")
            k = block_index[".".join(parts[:3])] if name != "skip_gain" else block_index[module]
            path = "NFNet/~/nf_block" + (f"_{k}" if k else "")
            if name != "skip_gain":
                path += "/~/" + _INNER[".".join(parts[3:])]
        hk_name = {"weight": "w", "bias": "bias" if "conv" in path else "b"}.get(name, name)
        params.setdefault(path, {})[hk_name] = np.array(array)
    return {k: mapping(v) for k, v in params.items()}


@pytest.fixture(scope="module")
def f0():
    torch.manual_seed(0)
    model = create_model("nfnet_f0").eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("skip_gain"):
                p.uniform_(0.2, 1.0)
            elif key.endswith(("gain", "bias")):
                p.uniform_(0.5, 1.5) if key.endswith("gain") else p.normal_(0, 0.1)
    return model


@pytest.fixture
def fake_haiku(monkeypatch):
    """Haiku's FlatMapping under its real module path, pickled as a call with one mapping."""
    module = types.ModuleType("haiku._src.data_structures")

    class FlatMapping(dict):
        def __reduce__(self):
            return FlatMapping, (dict(self),)
    FlatMapping.__module__ = "haiku._src.data_structures"
    FlatMapping.__qualname__ = "FlatMapping"
    module.FlatMapping = FlatMapping
    for name in ("haiku", "haiku._src"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "haiku._src.data_structures", module)
    return FlatMapping


def test_module_count_matches_spec(f0):
    assert len(to_haiku(f0)) == 94


@pytest.mark.parametrize("with_flat_mapping", [False, True])
def test_f0_haiku_file_gives_the_same_logits(f0, tmp_path, with_flat_mapping, request):
    mapping = request.getfixturevalue("fake_haiku") if with_flat_mapping else dict
    path = tmp_path / "F0_haiku.npz"
    path.write_bytes(pickle.dumps(to_haiku(f0, mapping), protocol=4))
    if with_flat_mapping:  # the loader must not need haiku: drop the stand-in before loading
        for name in ("haiku", "haiku._src", "haiku._src.data_structures"):
            sys.modules.pop(name)
    model = load_weights(create_model("nfnet_f0"), path).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = f0(x), model(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-6


def test_wrong_variant_is_named(f0, tmp_path):
    path = tmp_path / "F0_haiku.npz"
    path.write_bytes(pickle.dumps(to_haiku(f0)))
    model = create_model("nfnet_f1")
    with pytest.raises(CheckpointError, match="nfnet_f0"):
        load_weights(model, path)


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
