"""Shared by the tests that interrupt training subprocesses."""

import time

from normfree.errors import CheckpointError
from normfree.training.checkpoints import load_checkpoint


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
