"""Weights files that declare a 1 TB array in a few bytes: every reader refuses them before
allocating, within a second and without growing the process by more than a few hundred MB."""

import collections
import io
import json
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

ELEMENTS = 250_000_000_000  # float32: 1 TB


def huge_safetensors(path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [ELEMENTS],
                               "data_offsets": [0, 4 * ELEMENTS]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))


def huge_torch_zip(path):
    """A PyTorch zip checkpoint whose pickle declares a storage of 1 TB; the record has 16 B."""
    storage = object()

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (storage, 0, (ELEMENTS,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", ELEMENTS) if obj is storage \
                else None
    data = io.BytesIO()
    Pickler(data, protocol=2).dump({"w": Tensor()})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data.getvalue())
        archive.writestr("archive/data/0", bytes(16))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")


def _reconstruct():
    try:
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    return multiarray._reconstruct


def haiku_pickle(path, array_reduce):
    class Array:
        def __reduce__(self):
            return array_reduce
    path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": Array()}}, protocol=2))


def huge_numpy_reconstruct(path):
    """numpy's own pickle form, asking `_reconstruct` for a 1 TB array."""
    state = (1, (ELEMENTS,), np.dtype("float32"), False, bytes(16))
    haiku_pickle(path, (_reconstruct(), (np.ndarray, (ELEMENTS,), np.dtype("float32")), state))


def huge_dill_array(path):
    """dill's form, `_create_array(numpy.ndarray, (shape, dtype), state)`, with a 1 TB shape."""
    dill = types.ModuleType("dill._dill")

    def _create_array(f, args, state, npdict=None):  # never called: only pickled by name
        raise AssertionError
    _create_array.__module__, _create_array.__qualname__ = "dill._dill", "_create_array"
    dill._create_array = _create_array
    saved = {name: sys.modules.get(name) for name in ("dill", "dill._dill")}
    sys.modules.update({"dill": types.ModuleType("dill"), "dill._dill": dill})
    try:
        state = (1, (ELEMENTS,), np.dtype("float32"), False, bytes(16))
        haiku_pickle(path, (_create_array, (np.ndarray, ((ELEMENTS,), np.dtype("float32")),
                                            state)))
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


READ = """
import json, resource, sys, time
from normfree.errors import CheckpointError
from normfree.weights.loading import read_state_dict
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    read_state_dict(sys.argv[1])
    error = None
except CheckpointError as e:
    error = str(e)
print(json.dumps({"error": error, "seconds": time.perf_counter() - start,
                  "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


@pytest.mark.parametrize("make", [huge_safetensors, huge_torch_zip, huge_numpy_reconstruct,
                                  huge_dill_array])
def test_a_file_declaring_a_terabyte_is_refused_at_once(make, tmp_path):
    path = tmp_path / "weights.bin"
    make(path)
    assert path.stat().st_size < 2000
    result = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["error"] and str(path) in out["error"], out
    assert out["seconds"] < 1.0 and out["grew_mb"] < 300, out
