"""A wall-clock budget for a run (`--time-budget 15m`): after the first steps the run measures
its step time and evaluation speed, then fixes how many steps fit, so that training, every
validation and the final test end within the budget. The warm-up + cosine schedule is laid over
exactly those steps; the count is stored in the run's config (`steps`), so a resumed run keeps
it instead of measuring again. A budgeted run equals a run of that many `--steps` when the
measured steps fall in the warm-up (as in the presets); after it the rate is held at its peak
until the length is known.
"""

import itertools
import math
import time
from dataclasses import replace

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
    first slow steps are not counted) to the end of the warm-up, 25 to 200 steps after the
    first, so that the length is known while the rate does not yet depend on it."""

    def __init__(self, first_step, warmup_steps):
        span = min(max(warmup_steps - first_step, 25), 200)
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
    plan = None
    if run.procs.main:
        try:
            plan = measure_and_plan(run)
        except ConfigError as e:
            plan = {"error": str(e)}
    plan = distributed.gather(run.procs, plan)[0]
    if "error" in plan:
        raise ConfigError(plan["error"])
    run.cfg, run.plan, run.timer = replace(run.cfg, steps=plan["steps"]), plan, None
    if run.procs.main:
        print(f"--time-budget {run.cfg.time_budget}: {plan['step_ms']:.1f} ms a step, "
              f"{plan['validation_s']:.1f} s a validation, {plan['test_s']:.1f} s the test: "
              f"training {plan['steps']} steps ({plan['steps'] / run.steps_per_epoch:.1f} "
              "epochs) fits", flush=True)
        save_json(run.out / "config.json", to_dict(run.cfg))


def measure_and_plan(run):
    cfg = run.cfg
    step_seconds = run.timer.seconds_per_step()
    per_image = evaluation_seconds_per_image(run, run.data.val or run.data.test)
    val_images = run.data.val.num_images if run.data.val else 0
    validation = per_image * val_images * (2 if run.ema else 1)  # raw and EMA weights
    test = per_image * run.data.test.num_images
    budget = parse_duration(cfg.time_budget)
    # On shared 2-core machines the steps after the timed stretch ran 3-4.5 % slower in every
    # 15-minute fmnist run measured (docs/results.md): plan with 5 % more a step. The reserve
    # holds the start-up before `run.started`, writing curves, weights and results, and a margin.
    steps = plan_steps(budget, time.time() - run.started, run.step, run.steps_per_epoch,
                       cfg.eval_every, 1.05 * step_seconds, validation, test,
                       reserve=10.0 + 0.03 * budget)
    return {"steps": steps, "step_ms": 1000 * step_seconds, "validation_s": validation,
            "test_s": test, "budget_s": budget, "planned_at_step": run.step}


def evaluation_seconds_per_image(run, batches, count=2):
    """Time `evaluate` on up to `count` batches (after one untimed), per image."""
    timed = list(itertools.islice(batches, count + 1))
    evaluate_as_configured(run.cfg, run.model, timed[:1], run.normalize)
    start = time.perf_counter()
    result = evaluate_as_configured(run.cfg, run.model, timed[1:] or timed, run.normalize)
    return (time.perf_counter() - start) / result["images"]
