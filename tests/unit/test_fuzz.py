"""Fuzzing the readers of untrusted files: random and mutated bytes may only raise the library's
own documented errors (DataError for datasets, CheckpointError and its UnsafeWeightsError for
weights and checkpoints). A bounded number of cases runs by default; `-m slow` runs many more."""

import gzip
import io
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normfree import create_model
from normfree.errors import CheckpointError
from normfree.training.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from normfree.weights.metadata import export_weights
from normfree.weights.loading import load_weights, read_state_dict
from normfree.data.fashion_mnist import read_idx
from normfree.errors import DataError
from normfree.weights.haiku import read_haiku_file

EXAMPLES = [60, pytest.param(3000, marks=pytest.mark.slow)]


@st.composite
def mutated(draw, seed):
    """Random bytes, or `seed` truncated, with bytes overwritten, inserted or deleted."""
    kind = draw(st.sampled_from(["random", "truncate", "overwrite", "insert", "delete"]))
    if kind == "random":
        return draw(st.binary(max_size=1024))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def fuzz(seed, examples, check, suffix, tmp_path):
    path = tmp_path / f"fuzzed{suffix}"

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(seed))
    def run(data):
        path.write_bytes(data)
        check(path)
    run()


def idx_bytes():
    header = bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big") + (5).to_bytes(4, "big") * 2
    return header + bytes(range(100))


@pytest.mark.parametrize("examples", EXAMPLES)
@pytest.mark.parametrize("compressed", [False, True])
def test_idx_reader(examples, compressed, tmp_path):
    seed, suffix = (gzip.compress(idx_bytes()), ".gz") if compressed else (idx_bytes(), "")
    (tmp_path / f"ok{suffix}").write_bytes(seed)
    assert read_idx(tmp_path / f"ok{suffix}").shape == (4, 5, 5)

    def check(path):
        try:
            read_idx(path)
        except DataError:
            pass
    fuzz(seed, examples, check, suffix, tmp_path)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_checkpoint_loader(examples, tmp_path):
    model = create_model("nfnet_tiny", 2)
    save_checkpoint(tmp_path / "ok.pt", Checkpoint(model.state_dict(), {"seed": 0}, step=1))
    seed = (tmp_path / "ok.pt").read_bytes()
    assert load_checkpoint(tmp_path / "ok.pt")["step"] == 1

    def check(path):
        try:
            load_checkpoint(path)
        except CheckpointError:
            pass
    fuzz(seed, examples, check, ".pt", tmp_path)


def haiku_bytes():
    params = {"NFNet/~/linear": {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)},
              "NFNet/~/stem_conv0": {"w": np.ones((3, 3, 3, 4), np.float32)}}
    return pickle.dumps(params, protocol=4)


@pytest.mark.parametrize("examples", EXAMPLES)
@pytest.mark.parametrize("source", ["haiku", "safetensors", "torch"])
def test_weight_loaders(examples, source, tmp_path):
    model = create_model("nfnet_tiny", 2)
    if source == "haiku":
        seed, suffix = haiku_bytes(), ".npz"
    elif source == "safetensors":
        export_weights(model, tmp_path / "ok.safetensors", {"model": "nfnet_tiny"})
        seed, suffix = (tmp_path / "ok.safetensors").read_bytes(), ".safetensors"
    else:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        seed, suffix = buffer.getvalue(), ".pth"
    (tmp_path / f"ok{suffix}").write_bytes(seed)
    reader = read_haiku_file if source == "haiku" else read_state_dict  # the seed is valid
    assert len(reader(tmp_path / f"ok{suffix}")) > 0

    def check(path):
        try:
            load_weights(create_model("nfnet_tiny", 2), path)
        except CheckpointError:
            pass
    fuzz(seed, examples, check, suffix, tmp_path)
