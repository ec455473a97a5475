"""Checkpoints: one self-describing file, written atomically, read without unpickling code.

A checkpoint holds the model (from the unwrapped module), optimizer, EMA, step counters, the
resolved config and RNG states. It is written to a temporary file in the same directory, fsynced
and `os.replace`d, so a crash or a full disk never leaves a half-written file under the real name.
Loading uses `torch.load(weights_only=True)`: tensors and plain containers only.
"""

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import atomic_write
from ..weights.loading import load_torch_file


def save_checkpoint(path, state):
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    state = load_torch_file(path, map_location)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a normfree training checkpoint (expected a dict "
                              "with 'model' and 'config' entries)")
    return state


def rng_states():
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
