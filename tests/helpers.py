"""Shared by several test files: the command line in-process and its refusals, a Fashion-MNIST
folder of random images, waiting for a training subprocess's checkpoint, timm models with
random weights, and the relative error that parity tests assert."""

import gzip
import struct
import time

import torch

from normfree.cli import main
from normfree.data.fashion_mnist import FMNIST_FILES
from normfree.errors import CheckpointError
from normfree.training.checkpoints import load_checkpoint


def cli(capsys, *argv):
    """`normfree *argv` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, *fragments):
    """Exit 2, one error line (after argparse's usage lines, for its own errors)."""
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage: "), err
    assert all(f in lines[-1] or f in lines[0] for f in fragments), err


def idx_bytes(array_uint8):
    """A uint8 tensor in the IDX format of the Fashion-MNIST files."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array_uint8.ndim)
    header += b"".join(struct.pack(">I", s) for s in array_uint8.shape)
    return header + array_uint8.numpy().tobytes()


def write_fmnist(directory, n_train=20, n_test=10):
    """The four gzipped Fashion-MNIST files of random images and labels, in `directory`."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
        image_name, label_name = FMNIST_FILES[split]
        (directory / (image_name + ".gz")).write_bytes(gzip.compress(idx_bytes(images)))
        (directory / (label_name + ".gz")).write_bytes(gzip.compress(idx_bytes(labels)))
    return directory


def wait_for_checkpoint(process, path, at_step, timeout=300):
    """Poll until `path` holds a checkpoint of step ≥ `at_step`; `process` must keep running."""
    deadline = time.time() + timeout
    while True:
        try:
            if load_checkpoint(path)["step"] >= at_step:
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
