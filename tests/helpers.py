"""Shared by several test files: waiting for a training subprocess's checkpoint, timm models
with random weights, and the relative error that parity tests assert."""

import time

import torch

from normfree.errors import CheckpointError
from normfree.training.checkpoints import read_checkpoint


def wait_for_checkpoint(process, path, at_step, timeout=300):
    """Poll until `path` holds a checkpoint of step ≥ `at_step`; `process` must keep running."""
    deadline = time.time() + timeout
    while True:
        try:
            if read_checkpoint(path).step >= at_step:
                return
        except CheckpointError:
            pass  # not written yet
        assert process.poll() is None, "training ended first: " + process.stderr.read()[-2000:]
        assert time.time() < deadline, f"no checkpoint of step {at_step} after {timeout} s"
        time.sleep(0.005)


def relative_error(ours, theirs):
    """max |ours − theirs| / max |theirs|: logits parity, independent of the logits' scale."""
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def randomised_timm(timm_module, name, seed=0):
    """timm model `name` with every gain, bias and skip gain drawn at random (non-zero, so every
    residual branch counts) and a larger classifier."""
    torch.manual_seed(seed)
    model = timm_module.create_model(name).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("skipinit_gain"):
                p.uniform_(0.2, 1.0)
            elif key.endswith("gain"):
                p.uniform_(0.5, 1.5)
            elif key.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif key == "head.fc.weight":
                p.normal_(0.0, 0.05)
    return model
