"""A wall-clock budget for a run (`--time-budget 15m`): after the first steps the run measures
its step time and evaluation speed, then fixes how many steps fit, so that training, every
validation and the final test end within the budget. The warm-up + cosine schedule is laid over
exactly those steps; the count is stored in the run's config (`steps`), so a resumed run keeps
it instead of measuring again. A budgeted run equals a run of that many `--steps` when the
measured steps fall in the warm-up (as in the presets); after it the rate is held at its peak
until the length is known.
"""

import itertools
import json
import math
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import ConfigError
from ..files import save_json
from . import distributed
from .config import parse_duration, to_dict
from .runs import evaluate_as_configured

def describe_seconds(seconds):
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


class StepTimer:
    """Times a stretch of this process's steps: from a quarter of the way (compiling and the
    first slow steps are not counted) to the end of the warm-up, 25 to 500 steps after the
    first, so that the length is known while the rate does not yet depend on it. The longer
    the stretch, the less a slow minute of a shared machine skews the plan."""

    def __init__(self, first_step, warmup_steps):
        span = min(max(warmup_steps - first_step, 25), 500)
        self.start_step = first_step + max(5, span // 4)
        self.end_step = first_step + span
        self.started = None

    def after_step(self, step):
        """Call after every step; True once the measured steps are done."""
        if step == self.start_step:
            self.started = time.perf_counter()
        return step == self.end_step

    def seconds_per_step(self):
        return (time.perf_counter() - self.started) / (self.end_step - self.start_step)


def validations(epochs, eval_every):
    """How many validations a run of `epochs` epochs does (every `eval_every`th and the last)."""
    return epochs // eval_every + (1 if epochs % eval_every else 0)


def plan_steps(budget, elapsed, step, steps_per_epoch, eval_every, step_seconds,
               validation_seconds, test_seconds, reserve):
    """The most steps (at least one epoch) whose training, validations, test and `reserve`
    (seconds for writing the results) fit in `budget` seconds, `elapsed` of which are spent
    after `step` steps. Raises `ConfigError` with the smallest budget that works when not even
    one epoch fits."""
    done = validations(step // steps_per_epoch, eval_every)  # already in `elapsed`

    def seconds(total):
        epochs = math.ceil(total / steps_per_epoch)
        return ((total - step) * step_seconds + (validations(epochs, eval_every) - done)
                * validation_seconds + test_seconds + reserve)
    least = max(steps_per_epoch, step)
    left = budget - elapsed
    if seconds(least) > left:
        needed = elapsed + seconds(least)
        raise ConfigError(f"--time-budget {describe_seconds(budget)} is too small for one epoch "
                          f"and its validation here ({step_seconds * 1000:.0f} ms a step, "
                          f"{steps_per_epoch} steps an epoch); the smallest budget that works "
                          f"is about {describe_seconds(math.ceil(needed))}")
    fits, too_many = least, step + int(left / step_seconds) + 1
    while too_many - fits > 1:  # `seconds` grows with the step count: bisect
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if seconds(middle) <= left else (fits, middle)
    return fits


def budget_left(run):
    """{"left": "12m34s"} for the progress bar of a budgeted run, else {}."""
    if not run.cfg.time_budget:
        return {}
    left = parse_duration(run.cfg.time_budget) - (time.time() - run.started)
    return {"left": describe_seconds(max(left, 0))}


def plan_budget(run):
    """Fix a budgeted run's step count from its measured speed; rank 0 measures and decides,
    every rank takes its decision. The count goes into the config (and config.json)."""
    plan = decided_by_main(run.procs, lambda: measure_and_plan(run))
    run.cfg, run.plan, run.timer = replace(run.cfg, steps=plan["steps"]), plan, None
    if run.procs.main:
        print(f"--time-budget {run.cfg.time_budget}: {plan['step_ms']:.1f} ms a step, "
              f"{plan['validation_s']:.1f} s a validation, {plan['test_s']:.1f} s the test: "
              f"training {plan['steps']} steps ({plan['steps'] / run.steps_per_epoch:.1f} "
              "epochs) fits", flush=True)
        save_json(run.out / "config.json", to_dict(run.cfg))


def measure_and_plan(run):
    step_ms = 1000 * run.timer.seconds_per_step()  # first: the timing of evaluation is not a step
    per_image = evaluation_seconds_per_image(run, run.data.val or run.data.test)
    val_images = run.data.val.num_images if run.data.val else 0
    measured = {"step_ms": step_ms,
                "validation_s": per_image * val_images * (2 if run.ema else 1),  # raw and EMA
                "test_s": per_image * run.data.test.num_images,
                "elapsed_s": time.time() - run.started, "planned_at_step": run.step,
                "steps_per_epoch": run.steps_per_epoch}
    budget = parse_duration(run.cfg.time_budget)
    steps = steps_that_fit(measured, budget, run.cfg.eval_every)
    remember_speed(run.cfg, run.procs, measured)
    return {"steps": steps, **measured, "budget_s": budget}


def steps_that_fit(measured, budget, eval_every):
    """`plan_steps` for a measured start (`measure_and_plan`'s record) and a budget."""
    # On shared 2-core machines the steps after the timed stretch ran from 4.5 % slower to 30 %
    # faster than timed (docs/benchmarks.md): plan with 5 % more a step, so that the slow side
    # still fits. The reserve holds the start-up before `run.started`, writing curves, weights
    # and results, and a margin.
    return plan_steps(budget, measured["elapsed_s"], measured["planned_at_step"],
                      measured["steps_per_epoch"], eval_every,
                      1.05 * measured["step_ms"] / 1000, measured["validation_s"],
                      measured["test_s"], reserve=10.0 + 0.03 * budget)


# The speed of the last budgeted run of each setting on this machine, so that a budget it shows
# too small is refused before the next such run reads its data and compiles.
def speed_record_path():
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("NORMFREE_CACHE") or Path(cache) / "normfree") / "speeds.json"


# What does not change how long a step, a validation or the start-up takes.
_NOT_SPEED = {"seed", "out_dir", "resume", "time_budget", "epochs", "steps", "progress",
              "tensorboard", "checkpoint_every", "lr", "momentum", "weight_decay",
              "warmup_epochs", "label_smoothing"}


def speed_key(cfg, procs):
    settings = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_SPEED}
    return json.dumps([platform.node(), torch.get_num_threads(), procs.world_size, settings],
                      sort_keys=True, default=str)


def _speed_records():
    try:
        records = json.loads(speed_record_path().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: only the early check is lost
        return {}
    return records if isinstance(records, dict) else {}


def remember_speed(cfg, procs, measured):
    path = speed_record_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_json(path, {**_speed_records(), speed_key(cfg, procs): measured})
    except OSError:  # a read-only home must not stop the run
        pass


def refuse_known_too_small(cfg, procs):
    """Before any data is read: raise `ConfigError` (with the smallest budget that works) if an
    earlier run of the same settings on this machine measured that `cfg.time_budget` cannot fit
    one epoch."""
    def check():
        measured = _speed_records().get(speed_key(cfg, procs))
        if measured:
            try:
                steps_that_fit(measured, parse_duration(cfg.time_budget), cfg.eval_every)
            except ConfigError as e:
                raise ConfigError(f"{e} (measured by an earlier run of these settings)") from None
    decided_by_main(procs, check)


def decided_by_main(procs, decide):
    """`decide()`'s result on rank 0, or its `ConfigError`, raised on every rank alike."""
    outcome = None
    if procs.main:
        try:
            outcome = {"value": decide()}
        except ConfigError as e:
            outcome = {"error": str(e)}
    outcome = distributed.gather(procs, outcome)[0]
    if "error" in outcome:
        raise ConfigError(outcome["error"])
    return outcome["value"]


def evaluation_seconds_per_image(run, batches, count=2):
    """Time `evaluate` on up to `count` batches (after one untimed), per image."""
    timed = list(itertools.islice(batches, count + 1))
    evaluate_as_configured(run.cfg, run.model, timed[:1], run.normalize)
    start = time.perf_counter()
    result = evaluate_as_configured(run.cfg, run.model, timed[1:] or timed, run.normalize)
    return (time.perf_counter() - start) / result["images"]
