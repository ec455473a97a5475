"""`normfree.train` leaves the process as its caller had it, whether the run returns or raises:
the warnings filters, torch's thread count, the levels of torch's loggers, inductor's config and
the logging set-up (DESIGN.md: library code changes no process-wide state outside a context
manager, and speaks through a logger)."""

import logging
import warnings

import pytest
import torch
import torch._inductor.config as inductor_config

import normfree
from normfree.training import model_setup

CPP_EXTENSION = "torch.utils.cpp_extension"  # inductor's "no CUDA" while compiling for the CPU


def process_settings():
    loggers = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
               if name.startswith("torch") and isinstance(logger, logging.Logger)}
    ours = logging.getLogger("normfree")
    return {"warnings": list(warnings.filters), "threads": torch.get_num_threads(),
            "loggers": loggers, "inductor": inductor_config.get_config_copy(),
            "logging": (list(logging.root.handlers), logging.root.level, list(ours.handlers),
                        ours.level, ours.propagate)}


@pytest.mark.parametrize("ends", ["returns", "raises"])
def test_a_run_gives_back_the_process_settings_it_changed(ends, tmp_path, monkeypatch, caplog):
    """The run compiles (`torch.compile` stood in for, to take milliseconds): while it runs, the
    settings are the run's; after it, the caller's again. Its messages reach the caller's
    logging, under `normfree`."""
    caplog.set_level(logging.INFO, logger="normfree")
    logging.getLogger(CPP_EXTENSION)  # there before the run, as after importing torch's inductor
    before = process_settings()
    during = {}

    def compile_in_place(model, **options):
        during.update(threads=torch.get_num_threads(),
                      level=logging.getLogger(CPP_EXTENSION).level)
        # as `distributed.ddp` does for DDP's bucket-view warning
        warnings.filterwarnings("ignore", message="a filter set while the run builds its model")
        if ends == "raises":
            raise RuntimeError("the compiler failed")
        return model
    monkeypatch.setattr(model_setup.torch, "compile", compile_in_place)
    monkeypatch.setattr(model_setup.shutil, "which", lambda name: f"/usr/bin/{name}")
    cfg = normfree.preset("debug", synthetic_size=64, val_size=32, batch_size=16, epochs=1,
                          compile=True, device="cpu", threads=before["threads"] + 1,
                          progress=False, out_dir=str(tmp_path / "run"))
    if ends == "raises":
        with pytest.raises(RuntimeError, match="the compiler failed"):
            normfree.train(cfg)
    else:
        assert normfree.train(cfg)["steps"] == 2  # 32 training images, batches of 16
        said = {r.name: r.getMessage() for r in caplog.records if r.name.startswith("normfree")}
        assert said["normfree.training.loop"].startswith("test top-1")  # the last one
    assert during == {"threads": before["threads"] + 1, "level": logging.ERROR}
    after = process_settings()
    assert after["warnings"] == before["warnings"]
    assert after["threads"] == before["threads"]
    assert after["inductor"] == before["inductor"]
    assert after["logging"] == before["logging"]
    assert {name: after["loggers"][name] for name in before["loggers"]} == before["loggers"]
    assert all(after["loggers"][name] == logging.NOTSET
               for name in set(after["loggers"]) - set(before["loggers"]))
