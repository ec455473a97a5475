"""Every test gets its own normfree cache (budget speed records), never the user's; and a
stand-in for Haiku's FlatMapping and a random F0 as a Haiku file, for the Haiku-file tests of
both tiers."""

import pickle
import sys
import types

import pytest

from helpers import randomised_nfnet, to_haiku


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NORMFREE_CACHE", str(tmp_path_factory.mktemp("normfree-cache")))


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


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: skipped without one (scripts/gpu_check.sh runs them
    where there is one)."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (scripts/gpu_check.sh)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def f0():
    """NFNet-F0 with random weights (per test module: it is large)."""
    return randomised_nfnet("nfnet_f0", 0)


@pytest.fixture(scope="module")
def f0_haiku_file(f0, tmp_path_factory):
    """F0 as a plain-dict Haiku pickle, written once per module: it is 273 MB."""
    path = tmp_path_factory.mktemp("haiku") / "F0_haiku.npz"
    path.write_bytes(pickle.dumps(to_haiku(f0), protocol=4))
    return path
