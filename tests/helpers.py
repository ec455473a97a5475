"""Shared by several test files: the command line in-process and its refusals, a Fashion-MNIST
folder of random images, waiting for a training subprocess's checkpoint, normfree and timm models
with random weights, a normfree NFNet as the reference's Haiku parameters, and the relative
error that parity tests assert."""

import gzip
import struct
import time

import numpy as np
import torch

from normfree import create_model
from normfree.cli import main
from normfree.data.fashion_mnist import FMNIST_FILES
from normfree.errors import CheckpointError
from normfree.training.checkpoints import read_checkpoint


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


_HAIKU_INNER = {"conv1": "conv0", "conv2": "conv1", "conv2b": "conv1b", "conv3": "conv2",
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
                path += "/~/" + _HAIKU_INNER[".".join(parts[3:])]
        hk_name = {"weight": "w", "bias": "bias" if "conv" in path else "b"}.get(name, name)
        params.setdefault(path, {})[hk_name] = np.array(array)
    return {k: mapping(v) for k, v in params.items()}


def randomised_nfnet(name, seed):
    """A variant with random non-trivial skip gains, gains and biases (not their init values)."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("skip_gain"):
                p.uniform_(0.2, 1.0)
            elif key.endswith(("gain", "bias")):
                p.uniform_(0.5, 1.5) if key.endswith("gain") else p.normal_(0, 0.1)
    return model
