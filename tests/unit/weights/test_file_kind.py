"""What a weights file is, from its bytes: a safetensors header length of 128 modulo 256 starts
the file with 0x80, a pickle's first byte, and must still read as safetensors."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from normfree.weights.loading import file_kind


@pytest.mark.parametrize("padding", range(0, 260, 7))
def test_safetensors_are_recognised_whatever_their_header_length(tmp_path, padding):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, path, metadata={"note": "x" * padding})
    assert file_kind(path) == "safetensors"


def test_a_header_starting_with_the_pickle_byte_is_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    for padding in range(256):
        save_file({"w": torch.zeros(2)}, path, metadata={"note": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80 and file_kind(path) == "safetensors"
    pickled = tmp_path / "w.pkl"
    pickled.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    assert file_kind(pickled) == "pickle"
