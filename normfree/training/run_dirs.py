"""Run directories and resuming: where a run writes, which run `--resume` continues, and which
settings a resumed run may change (how it executes) and which it must keep (what it computes).
"""

import logging
import time
from dataclasses import fields, replace
from pathlib import Path

from ..errors import ConfigError
from .config import PRESETS, TrainConfig, from_dict, preset
from .run_folder import CHECKPOINT, run_files, saved_config
from .specs import CHANGEABLE_ON_RESUME

RUNS_ROOT = Path("runs")
log = logging.getLogger(__name__)


def run_dir(cfg):
    """The run's directory, not created yet: `--out-dir`, or runs/<model>-<time>. Refuses a
    file, and a directory holding another run unless resuming it."""
    if cfg.resume and not cfg.out_dir:
        raise ConfigError("--resume needs --out-dir RUN: the run to continue")
    out = Path(cfg.out_dir or RUNS_ROOT / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out-dir {out} is a file, not a directory")
    if run_files(out) and not cfg.resume:
        raise ConfigError(f"output directory {out} already exists: pass --resume to continue "
                          "that run, or choose another --out-dir")
    return out


def latest_run(model, root=RUNS_ROOT):
    """The most recently checkpointed run directory of `model` under `root`, or None."""
    runs = [p for p in Path(root).glob(f"{model}-*") if (p / CHECKPOINT).is_file()]
    return max(runs, key=lambda p: (p / CHECKPOINT).stat().st_mtime, default=None)


def config_differences(cfg, saved):
    """'--flag: the run has X, given Y' for each setting that shapes the run and differs."""
    return [f"--{f.name.replace('_', '-')}: the run has {getattr(saved, f.name)!r}, given "
            f"{getattr(cfg, f.name)!r}" for f in fields(TrainConfig)
            if f.name not in CHANGEABLE_ON_RESUME
            and getattr(cfg, f.name) != getattr(saved, f.name)]


def config_to_resume(out, overrides):
    """The config of the run in `out` (its checkpoint's: config.json is only a copy for people)
    with `overrides` (flags given again) applied, or None when `out` is empty or missing.
    Flags that shape the run must agree with it."""
    saved = saved_config(out)
    if saved is None:
        return None
    saved = from_dict(saved)
    cfg = replace(saved, **{**overrides, "resume": True, "out_dir": str(out)})
    differ = config_differences(cfg, saved)
    if differ:
        raise ConfigError(f"{out} is a run with other settings; " + "; ".join(differ)
                          + f". Resume it without them (normfree train --resume --out-dir {out})"
                          " or start a new run")
    return cfg


def config_for_resume(preset_name, flags):
    """`normfree train --resume [--out-dir RUN] [flags]`: the run's own config with the flags
    given again (never the preset's), or, when RUN is empty or missing, the preset's with the
    flags (the run starts). Without --out-dir, the latest run of the model under runs/
    (said)."""
    out = flags.get("out_dir")
    if out is None:
        model = flags.get("model", PRESETS[preset_name].get("model", TrainConfig.model))
        out = latest_run(model) if model else None
        if out is None:
            raise ConfigError(f"--resume without --out-dir: no {model or 'model'} run under "
                              f"{RUNS_ROOT}/ to continue; pass --out-dir RUN")
        log.info(f"--resume: continuing the latest {model} run, {out}")
    flags = {**flags, "out_dir": str(out)}
    return config_to_resume(out, flags) or preset(preset_name, **flags)
