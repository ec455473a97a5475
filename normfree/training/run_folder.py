"""The run folder's contract (docs/architecture.md, "The run folder"): what it holds, who owns
it, and which of its files `--resume` trusts.

- `checkpoint.pt` is the source of truth for resuming; `checkpoint.prev.pt` is the one before
  it. A damaged `checkpoint.pt` (its CRCs fail) is set aside as `checkpoint.damaged.pt` and the
  run continues from `checkpoint.prev.pt`, said.
- `config.json`, `metrics.csv`, `curves.png`, `model.safetensors`, `results.json` are outputs
  for people: a damaged one is named, then rebuilt or set aside, never trusted over the
  checkpoint.
- `.lock` names the process that owns the folder (`lock.py`); temporary files of writes a kill
  interrupted are removed by the next owner.
"""

import json
import os
from pathlib import Path

from ..errors import CheckpointError, ConfigError, OutputError
from ..files import temp_files
from .checkpoints import read_checkpoint, read_config
from .lock import LOCK_NAME
from . import distributed
from .logs import say

CHECKPOINT, PREVIOUS, DAMAGED = "checkpoint.pt", "checkpoint.prev.pt", "checkpoint.damaged.pt"
CONFIG = "config.json"


def run_files(out):
    """The names of what `out` holds but for its lock and temporary files (sorted)."""
    out = Path(out)
    if not out.is_dir():
        return []
    scratch = {LOCK_NAME} | {p.name for p in temp_files(out)}
    return sorted(p.name for p in out.iterdir() if p.name not in scratch)


def make_run_dir(out, cfg, lock, log=say):
    """Create the run directory once every check has passed, and own it (`lock`): a new run
    refuses a folder another process has filled since `run_dir` checked it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the run directory {out}: {e.strerror or e}") from None
    lock.acquire()
    remove_temp_files(out, log)
    if not cfg.resume and run_files(out):
        raise ConfigError(f"output directory {out} already exists: pass --resume to continue "
                          "that run, or choose another --out-dir")


def checkpoint_resumed(cfg, procs, device, out):
    """(checkpoint, path) that `--resume` continues from, or (None, None): rank 0 chooses it
    (run_folder.py: the latest verified one) and the others read the same file."""
    if not cfg.resume:
        return None, None
    state, path = checkpoint_to_resume(out, device) if procs.main else (None, None)
    path = distributed.gather(procs, path and str(path))[0]
    if path is not None and state is None:
        state = read_checkpoint(path, device)
    return state, path


def what_is_kept(out):
    """For a run that stopped on an error: which checkpoint it leaves, if any."""
    path = Path(out) / CHECKPOINT
    return (f"the last checkpoint, {path}, is kept" if path.is_file()
            else "no checkpoint had been written")


def remove_temp_files(out, log=say):
    """Remove what writes interrupted by a kill left (the caller owns the folder)."""
    stale = temp_files(out)
    if stale:
        size = sum(p.stat().st_size for p in stale) / 2**20
        for path in stale:
            path.unlink(missing_ok=True)
        log(f"{out}: removed {len(stale)} temporary file(s) ({size:.1f} MiB) left by an "
            "interrupted write")


def checkpoint_to_resume(out, map_location="cpu", log=say):
    """(checkpoint, its path) that `--resume` continues from, or (None, None) to start the run
    (the caller owns the folder). Falls back to the previous checkpoint when the latest is
    damaged; refuses a folder whose run cannot continue."""
    out = Path(out)
    remove_temp_files(out, log)
    errors = []
    for name in (CHECKPOINT, PREVIOUS):
        path = out / name
        if not path.is_file():
            continue
        try:
            checkpoint = read_checkpoint(path, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors:  # the latest was damaged: keep it aside, out of the next save's way
            os.replace(out / CHECKPOINT, out / DAMAGED)
            log(f"{errors[0]}; set aside as {DAMAGED}: resuming from {PREVIOUS} "
                f"(step {checkpoint.step})")
        check_config_file(out, checkpoint.config, log)
        return checkpoint, path
    if errors:
        raise CheckpointError("cannot resume: " + "; ".join(errors))
    refuse_lost_checkpoint(out)
    log(f"--resume: no checkpoint in {out} yet: starting the run")
    return None, None


def refuse_lost_checkpoint(out):
    """Refuse to start afresh in a folder holding a started or finished run's files (starting
    would overwrite them); its config.json alone (no step taken) does not count."""
    files = [name for name in run_files(out) if name != CONFIG]
    if files:
        raise ConfigError(f"--resume: {out} holds {', '.join(files)} but no {CHECKPOINT} to "
                          f"continue from, and starting again would overwrite them. Put the "
                          f"run's {CHECKPOINT} back in {out}, or start over with a new "
                          "--out-dir")


def check_config_file(out, config, log=say):
    """Say when config.json does not hold the checkpoint's config (damaged or edited): the run
    keeps the checkpoint's, and rewrites config.json from it."""
    path = Path(out) / CONFIG
    if not path.is_file():
        return
    try:
        written = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        log(f"{path} is damaged ({type(e).__name__}): rewritten from the checkpoint")
        return
    if written != config:
        log(f"{path} does not match the checkpoint (edited?): the run keeps the checkpoint's "
            "settings and rewrites the file")


def saved_config(out):
    """The settings of the run in `out` as a dict: its checkpoint's (the latest readable),
    else, for a run that took no step, its config.json's; None for an empty or missing
    folder. Refuses a folder whose settings cannot be known, or whose run cannot continue."""
    out = Path(out)
    errors = []
    for name in (CHECKPOINT, PREVIOUS):
        if (out / name).is_file():
            try:
                return read_config(out / name)
            except CheckpointError as e:
                errors.append(str(e))
    if errors:
        raise CheckpointError("cannot resume: " + "; ".join(errors))
    refuse_lost_checkpoint(out)
    if not run_files(out):
        return None
    try:
        config = json.loads((out / CONFIG).read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"--resume: {out / CONFIG} is damaged ({type(e).__name__}) and the "
                          "run has no checkpoint, so its settings are unknown; it took no step: "
                          "start it again with a new --out-dir (or delete the folder)") from None
    return config
