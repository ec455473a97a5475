"""A wall-clock budget for a run (`--time-budget 15m`): after the first steps the run measures
its step time and evaluation speed, then fixes how many steps fit, so that training, every
validation and the final test end within the budget. The warm-up + cosine schedule is laid over
exactly those steps; the count is stored in the run's config (`steps`). The presets time steps
in the warm-up, whose rate does not depend on the length; were the timing to end after it, the
rate would be held at its peak until the length is known.

A shared machine's speed moves by minutes (docs/benchmarks.md), so a plan made once leaves
minutes unused or overruns. At the end of every later epoch but the last the run plans again
from how fast that epoch ran and the time left, and lays the rest of the cosine over the new
length from where it has got to, so the rate stays continuous. Every plan is kept in the
checkpoint: `--resume` continues from the last one, and plans on like an uninterrupted run.

The loop asks a `Budget` after every step; it answers with a typed `Plan` when it has timed
enough, and the loop applies it (the run's length, config.json): nothing here changes the run.
"""

import itertools
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional

import torch

from ..errors import ConfigError
from ..files import save_json
from . import distributed
from .config import parse_duration, to_dict
from .optim import cosine_progress, warmup_steps
from .resizing import full_size_steps
from .checkpoint_eval import evaluate_as_configured
from .specs import UNTIMED_FIELDS


@dataclass(frozen=True)
class Timing:
    """What a budgeted run measured before its first plan, and where it was then."""

    step_ms: float  # a full-size step
    validation_s: float  # one validation (raw and EMA weights)
    test_s: float
    elapsed_s: float  # spent by then, start-up included
    planned_at_step: int
    steps_per_epoch: int
    image_size: Optional[int] = None  # of the data (full size)

    @classmethod
    def from_record(cls, values):
        """From `asdict`'s keys; None for no record or one of another shape."""
        try:
            return cls(**values) if values else None
        except TypeError:
            return None


@dataclass(frozen=True)
class Replan:
    """A plan made again at an epoch's end, from that epoch's step time."""

    at_step: int
    step_ms: float  # a full-size step, in that epoch
    elapsed_s: float
    steps: int  # the new length


@dataclass(frozen=True)
class Plan:
    """What a budgeted run measured and chose. Checkpoints and results.json hold `to_dict`'s
    flat dict; runs before the typed plan wrote the same keys, without `bend` and `replans`
    until their first plan again."""

    steps: int  # the run's length
    budget_s: float
    timing: Timing
    bend: Optional[tuple] = None  # (step, cosine progress) where the cosine was last laid anew
    replans: tuple = ()  # of `Replan`

    def to_dict(self):
        return {"steps": self.steps, **asdict(self.timing), "budget_s": self.budget_s,
                "bend": self.bend, "replans": [asdict(again) for again in self.replans]}

    @classmethod
    def from_dict(cls, values):
        timing = {f.name: values[f.name] for f in fields(Timing) if f.name in values}
        return cls(steps=values["steps"], budget_s=values["budget_s"], timing=Timing(**timing),
                   bend=tuple(values["bend"]) if values.get("bend") else None,
                   replans=tuple(Replan(**again) for again in values.get("replans", ())))


def describe_seconds(seconds):
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


class StepTimer:
    """Times this process's steps after `start_step` up to `end_step`, in seconds per full-size
    step (a step on small images counts as its share of the pixels, resizing.py). A step that
    compiled a new graph is not counted: a run compiles a few times, not at every step."""

    def __init__(self, start_step, end_step):
        self.start_step, self.end_step = start_step, end_step
        self.last = None  # when the last step the timing starts from or counts ended
        self.seconds = self.full_steps = 0.0

    @classmethod
    def in_warmup(cls, first_step, warmup_steps):
        """The stretch the first plan is made from: from a quarter of the way (compiling and the
        first slow steps are not counted) to the end of the warm-up, 25 to 500 steps after the
        first, so that the length is known while the rate does not yet depend on it. The
        longer the stretch, the less a slow minute of a shared machine skews the plan."""
        span = min(max(warmup_steps - first_step, 25), 500)
        return cls(first_step + max(5, span // 4), first_step + span)

    @classmethod
    def rest_of_epoch(cls, run, epoch):
        """Times from now to the end of `epoch` (the start of its data included: every epoch
        pays it), for planning again there; None in the run's last epoch."""
        end = (epoch + 1) * run.steps_per_epoch
        if end >= run.total_steps:
            return None
        timer = cls(run.step, end)
        timer.last = time.perf_counter()
        return timer

    def after_step(self, step, cost=1.0, compiled=False):
        """Call after every step with its `cost` in full-size steps, and whether it
        `compiled`; True once the measured steps are done."""
        now = time.perf_counter()
        if step > self.start_step and self.last is not None and not compiled:
            self.seconds += now - self.last
            self.full_steps += cost
        if step >= self.start_step:
            self.last = now
        return step == self.end_step

    def seconds_per_step(self):
        """Seconds a full-size step took (`None` if no step was counted)."""
        return self.seconds / self.full_steps if self.full_steps else None


def validates_periodically(epoch, eval_every):
    """Whether epoch number `epoch` (from 1) ends with a validation for being an
    `eval_every`th (0: none is); the run's last epoch validates either way."""
    return bool(eval_every) and epoch % eval_every == 0


def periodic_validations(epochs, eval_every):
    """How many of the first `epochs` epochs end with a periodic validation."""
    return epochs // eval_every if eval_every else 0


def validations(epochs, eval_every):
    """How many validations a run of `epochs` epochs does: the periodic ones, and after the
    last epoch if that is not one of them."""
    last = 0 if validates_periodically(epochs, eval_every) else 1
    return periodic_validations(epochs, eval_every) + last


def plan_steps(budget, elapsed, step, steps_per_epoch, eval_every, step_seconds,
               validation_seconds, test_seconds, reserve, full_steps=None):
    """The most steps (at least one epoch) whose training, validations, test and `reserve`
    (seconds for writing the results) fit in `budget` seconds, `elapsed` of which are spent
    after `step` steps. `step_seconds` is a full-size step's time, `full_steps(total)` what the
    steps after `step` up to `total` cost in full-size steps (by default one each). Raises
    `ConfigError` with the smallest budget that works when not even one epoch fits."""
    # in `elapsed` already: the periodic validations before the epoch that ends with `step`
    done = periodic_validations(max(step - 1, 0) // steps_per_epoch, eval_every)

    def seconds(total):
        epochs = math.ceil(total / steps_per_epoch)
        cost = full_steps(total) if full_steps else total - step
        return (cost * step_seconds + (validations(epochs, eval_every) - done)
                * validation_seconds + test_seconds + reserve)
    least = max(steps_per_epoch, step)
    left = budget - elapsed
    if seconds(least) > left:
        needed = elapsed + seconds(least)
        raise ConfigError(f"--time-budget {describe_seconds(budget)} is too small for one epoch "
                          f"and its validation here ({step_seconds * 1000:.0f} ms a step, "
                          f"{steps_per_epoch} steps an epoch); the smallest budget that works "
                          f"is about {describe_seconds(math.ceil(needed))}")
    fits, too_many = least, 2 * least
    while seconds(too_many) <= left:  # small steps cost less than `step_seconds`
        fits, too_many = too_many, 2 * too_many
    while too_many - fits > 1:  # `seconds` grows with the step count: bisect
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if seconds(middle) <= left else (fits, middle)
    return fits


def elapsed_seconds(run):
    return time.time() - run.started


def budget_left(run):
    """{"left": "12m34s"} for the progress bar of a budgeted run, else {}."""
    if not run.cfg.time_budget:
        return {}
    left = parse_duration(run.cfg.time_budget) - elapsed_seconds(run)
    return {"left": describe_seconds(max(left, 0))}


class Budget:
    """A budgeted run's planner. The loop tells it each epoch's start and each step's end; when
    it has timed enough steps it answers with a new `Plan`, which the loop applies. It keeps its
    own timer and reads the run, never changing it."""

    def __init__(self, run):
        """For `run` as it starts or resumes: before its first plan, it times the warm-up."""
        self.timer = (StepTimer.in_warmup(run.step, run.warmup_steps)
                      if run.total_steps is None else None)

    def start_epoch(self, run, epoch):
        """Once the run has a plan, plan again from how fast `epoch` runs."""
        if run.plan is not None:
            self.timer = StepTimer.rest_of_epoch(run, epoch)

    def after_step(self, run, cost=1.0, compiled=False):
        """The new plan when the step that ended (`cost` full-size steps, `compiled` a new
        graph: `StepTimer.after_step`) was the last one timed, else None. Rank 0 measures and
        decides, every rank gets its decision."""
        if self.timer is None or not self.timer.after_step(run.step, cost, compiled):
            return None
        step_seconds, self.timer = self.timer.seconds_per_step(), None
        if run.plan is None:
            return decided_by_main(run.procs, lambda: measure_and_plan(run, step_seconds))
        return decided_by_main(run.procs, lambda: planned_again(
            run.plan, run.step, step_seconds, elapsed_seconds(run), run.cfg))


def plan_announcement(plan, cfg, steps_per_epoch):
    """The line a run says when a plan sets or moves its length."""
    step = "a full-size step" if cfg.small_image_scale else "a step"
    if plan.replans:
        last = plan.replans[-1]
        measured = (f"{last.step_ms:.1f} ms {step} in the last epoch, "
                    f"{describe_seconds(plan.budget_s - last.elapsed_s)} left")
    else:
        timing = plan.timing
        measured = (f"{timing.step_ms:.1f} ms {step}, {timing.validation_s:.1f} s a validation, "
                    f"{timing.test_s:.1f} s the test")
    return (f"--time-budget {cfg.time_budget}: {measured}: training {plan.steps} steps "
            f"({plan.steps / steps_per_epoch:.1f} epochs) fits")


def measure_and_plan(run, step_seconds):
    """The first plan, from `step_seconds` (a full-size step's time) and evaluation timed now;
    the timing is remembered for the settings (`refuse_known_too_small`)."""
    per_image = evaluation_seconds_per_image(run, run.data.val or run.data.test)
    val_images = run.data.val.num_images if run.data.val else 0
    timing = Timing(step_ms=1000 * step_seconds,
                    validation_s=per_image * val_images * (2 if run.ema else 1),  # raw and EMA
                    test_s=per_image * run.data.test.num_images,
                    elapsed_s=elapsed_seconds(run), planned_at_step=run.step,
                    steps_per_epoch=run.steps_per_epoch, image_size=run.data.image_size)
    budget = parse_duration(run.cfg.time_budget)
    steps = steps_that_fit(timing, budget, run.cfg)
    remember_speed(run.cfg, run.procs, timing)
    return Plan(steps=steps, budget_s=budget, timing=timing)


def planned_again(plan, step, step_seconds, elapsed, cfg):
    """`plan` laid again at `step` (an epoch's end) from the time of a full-size step since the
    last plan (None: no step was timed) and the time spent; the validation and test times stay
    as first measured. The rest of the cosine is laid over the new length from the progress it
    has reached (its `bend`), so the rate does not jump. When not even the epoch's validation
    and the test fit any more, the run ends with this epoch."""
    if step_seconds is None:
        return plan
    warmup = warmup_steps(cfg, plan.timing.steps_per_epoch)
    bend = plan.bend
    if step > warmup:
        bend = (step, cosine_progress(step, warmup, plan.steps, bend))
    measured = replace(plan.timing, step_ms=1000 * step_seconds, elapsed_s=elapsed,
                       planned_at_step=step)
    try:
        steps = steps_that_fit(measured, plan.budget_s, cfg, bend)
    except ConfigError:
        steps = step
    if steps == plan.steps:
        return plan
    again = Replan(at_step=step, step_ms=1000 * step_seconds, elapsed_s=elapsed, steps=steps)
    return replace(plan, steps=steps, bend=bend, replans=(*plan.replans, again))


def steps_that_fit(timing, budget, cfg, bend=None):
    """`plan_steps` from a `Timing`, a budget, the run's settings and where its cosine was last
    laid anew (`bend`)."""
    # On shared machines the steps after the timed stretch ran slower or faster than timed
    # (docs/benchmarks.md, "How steady a step is"): plan with 5 % more a step, so that the slow
    # side still fits. The reserve holds the start-up before `run.started`, writing curves,
    # weights and results, and a margin.
    step, per_epoch = timing.planned_at_step, timing.steps_per_epoch
    warmup = warmup_steps(cfg, per_epoch)
    return plan_steps(budget, timing.elapsed_s, step, per_epoch, cfg.eval_every,
                      1.05 * timing.step_ms / 1000, timing.validation_s, timing.test_s,
                      reserve=10.0 + 0.03 * budget,
                      full_steps=lambda total: full_size_steps(
                          cfg, timing.image_size, step, total, warmup, bend))


# The speed cache: the `Timing` of the last budgeted run of each setting on this machine, so
# that a budget it shows too small is refused before the next such run reads its data and
# compiles (docs/architecture.md §11). NORMFREE_SPEED_CACHE=0 turns it off: nothing read or
# written, for runs that must not depend on earlier ones or a home that must stay untouched.
SPEED_CACHE_SWITCH = "NORMFREE_SPEED_CACHE"


def speed_cache_on():
    return os.environ.get(SPEED_CACHE_SWITCH, "1").strip().lower() not in ("0", "off", "false")


def speed_record_path():
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("NORMFREE_CACHE") or Path(cache) / "normfree") / "speeds.json"


def speed_key(cfg, procs):
    settings = {k: v for k, v in to_dict(cfg).items() if k not in UNTIMED_FIELDS}
    return json.dumps([platform.node(), torch.get_num_threads(), procs.world_size, settings],
                      sort_keys=True, default=str)


def _speed_records():
    if not speed_cache_on():
        return {}
    try:
        records = json.loads(speed_record_path().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: only the early check is lost
        return {}
    return records if isinstance(records, dict) else {}


def remember_speed(cfg, procs, timing):
    if not speed_cache_on():
        return
    path = speed_record_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_json(path, {**_speed_records(), speed_key(cfg, procs): asdict(timing)})
    except OSError:  # a read-only home must not stop the run
        pass


def refuse_known_too_small(cfg, procs):
    """Before any data is read: raise `ConfigError` (with the smallest budget that works) if an
    earlier run of the same settings on this machine measured that `cfg.time_budget` cannot fit
    one epoch."""
    def check():
        timing = Timing.from_record(_speed_records().get(speed_key(cfg, procs)))
        if timing:
            try:
                steps_that_fit(timing, parse_duration(cfg.time_budget), cfg)
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
