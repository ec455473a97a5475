"""DeepMind's released NFNet weights (`F0_haiku.npz` … `F6_haiku.npz`), read safely.

The files are dill pickles of `{module_path: {param_name: float32 array}}`
(docs/architecture.md §10). Unpickling can run arbitrary code, so `read_haiku_file` uses an
unpickler that resolves only the handful of globals such a file needs (numpy array
reconstruction under numpy 1 and 2 module paths, dill's array helper re-implemented here,
Haiku's FlatMapping as a plain dict) and refuses every other global before anything from the
file runs. Neither dill nor haiku is imported.
"""

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError

try:  # numpy 2
    from numpy._core import multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray


class UnsafeWeightsError(CheckpointError):
    """The file references code that a weights file has no business calling."""


def _declared_bytes(shape, dtype):
    count = 1
    for n in (shape if isinstance(shape, (tuple, list)) else (shape,)):
        count *= int(n)
    return count * np.dtype(dtype).itemsize


class _ArrayConstructors:
    """numpy's array constructors, refusing any array larger than the file that declares it:
    an allocation the file's own bytes cannot fill is a hostile or damaged file (a pickle can
    ask for a terabyte in a few bytes)."""

    def __init__(self, limit):
        self.limit = limit

    def _check(self, shape, dtype):
        try:
            size = _declared_bytes(shape, dtype)
        except (TypeError, ValueError, OverflowError):
            raise UnsafeWeightsError(f"an array of shape {shape!r} and dtype {dtype!r}: "
                                     "not a plain numeric array") from None
        if size > self.limit:
            raise UnsafeWeightsError(f"declares an array of {size:,} bytes ({shape}), more than "
                                     f"the file's {self.limit:,}: damaged or hostile")

    def reconstruct(self, subtype, shape, dtype):
        if subtype not in (np.ndarray, self.ndarray):  # the file names numpy.ndarray: ours
            raise UnsafeWeightsError(f"array subclass {subtype!r} is not allowed")
        self._check(shape, dtype)
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def ndarray(self, shape, dtype=float, buffer=None, *args):
        if buffer is None:
            self._check(shape, dtype)
        return np.ndarray(shape, dtype, buffer, *args)

    def create_array(self, f, args, state, npdict=None):
        """dill's `_create_array`, restricted to numpy's own (bounded) array constructors."""
        if f not in (self.reconstruct, self.ndarray):
            raise UnsafeWeightsError(f"dill array helper asked to call {f!r}; only numpy "
                                     "array reconstruction is allowed")
        array = f(*args)
        array.__setstate__(state)
        if npdict:
            raise UnsafeWeightsError("array subclass attributes (dill npdict) are not allowed")
        return array


def _flat_mapping(mapping=None):
    """Haiku's FlatMapping, called with one mapping: a plain dict is all we need."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise UnsafeWeightsError(f"FlatMapping expects a mapping, got {type(mapping).__name__}")
    return dict(mapping)


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, file, limit):
        super().__init__(file)
        self.arrays = _ArrayConstructors(limit)

    def find_class(self, module, name):
        allowed = {("numpy", "ndarray"): self.arrays.ndarray, ("numpy", "dtype"): np.dtype,
                   ("dill._dill", "_create_array"): self.arrays.create_array,
                   ("haiku._src.data_structures", "FlatMapping"): _flat_mapping}
        if module in _NUMPY_MODULES and name in ("_reconstruct", "scalar"):
            return self.arrays.reconstruct if name == "_reconstruct" else multiarray.scalar
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise UnsafeWeightsError(
            f"refusing to load {module}.{name}: a weights file may only reference numpy array "
            "reconstruction, dill's _create_array and Haiku's FlatMapping")


def read_haiku_file(path):
    """{module_path: {param: float32 ndarray}} from a Haiku pickle, executing nothing from it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            params = _WeightsUnpickler(f, limit=path.stat().st_size).load()
    except CheckpointError as e:
        raise type(e)(f"{path}: {e}") from None
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} does not exist") from None
    except Exception as e:  # truncated or non-pickle bytes raise many different errors
        raise CheckpointError(f"{path}: not a readable Haiku weights pickle "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(params, dict) or not all(
            isinstance(v, dict) and all(isinstance(a, np.ndarray) for a in v.values())
            for v in params.values()):
        raise CheckpointError(f"{path}: expected {{module: {{param: array}}}}, got "
                              f"{type(params).__name__}")
    return params


# Haiku module names (joined with "/~/") → normfree module names (docs/architecture.md §10).
_BLOCK_MODULES = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3",
                  "conv_shortcut": "downsample.conv", "squeeze_excite/~/linear": "se.fc1",
                  "squeeze_excite/~/linear_1": "se.fc2", "": ""}
_PARAMS = {"w": "weight", "b": "bias", "bias": "bias", "gain": "gain", "skip_gain": "skip_gain"}
_BLOCK = re.compile(r"^NFNet/~/nf_block(?:_(\d+))?(?:/~/(.+))?$")


def _layout(array):
    """HWIO conv kernels → OIHW; [in, out] linear weights → [out, in]; the rest as is."""
    t = torch.from_numpy(np.array(array, dtype=np.float32))  # a copy, 0-d stays 0-d
    if t.ndim == 4:
        return t.permute(3, 2, 0, 1).contiguous()
    if t.ndim == 2:
        return t.t().contiguous()
    return t


def nfnet_depths_of(params):
    """Stage depths of the NFNet-F{n} a Haiku file holds: (1, 2, 6, 3)·(n + 1)."""
    blocks = {m.group(1) for m in map(_BLOCK.match, params) if m}
    n = len(blocks) // 12 - 1
    if n < 0 or len(blocks) % 12:
        raise CheckpointError(f"{len(blocks)} nf_block modules: not an NFNet-F* file "
                              "(expected 12·(n + 1))")
    return tuple(d * (n + 1) for d in (1, 2, 6, 3))


def haiku_state_dict(params):
    """normfree state dict from a reference NFNet params dict."""
    depths = nfnet_depths_of(params)
    block_names = [f"stages.{s}.{b}" for s, depth in enumerate(depths) for b in range(depth)]
    state = {}
    for module, values in params.items():
        block = _BLOCK.match(module)
        if block:
            index = int(block.group(1) or 0)
            inner = _BLOCK_MODULES.get(block.group(2) or "")
            if inner is None or index >= len(block_names):
                raise CheckpointError(f"unexpected Haiku module {module!r}")
            target = block_names[index] + ("." + inner if inner else "")
        elif m := re.match(r"^NFNet/~/stem_conv(\d)$", module):
            target = f"stem.conv{int(m.group(1)) + 1}"
        elif module == "NFNet/~/final_conv":
            target = "final_conv"
        elif module == "NFNet/~/linear":
            target = "head.fc"
        else:
            raise CheckpointError(f"unexpected Haiku module {module!r}")
        for name, array in values.items():
            if name not in _PARAMS:
                raise CheckpointError(f"unexpected Haiku parameter {module}/{name}")
            state[f"{target}.{_PARAMS[name]}"] = _layout(array)
    return state
