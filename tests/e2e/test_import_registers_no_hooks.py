"""Importing normfree, in a fresh interpreter, registers no global module or optimizer hooks."""

import subprocess
import sys


def test_importing_normfree_registers_no_global_hooks():
    code = ("import torch.optim.optimizer as o, torch.nn.modules.module as m, normfree; "
            "print(len(o._global_optimizer_pre_hooks) + len(o._global_optimizer_post_hooks) "
            "+ len(m._global_forward_hooks) + len(m._global_backward_hooks))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "0"
