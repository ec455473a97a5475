"""--time-budget's arithmetic: durations, the presets' budgets, the step plan, the timed stretch
and the plans after it (the runs: tests/e2e/test_budget_runs.py)."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from normfree.errors import ConfigError
from normfree.training import budget
from normfree.training.distributed import Processes
from normfree.training.config import TrainConfig, describe, parse_duration, preset
from normfree.training.optim import lr_at


@pytest.mark.parametrize("text,seconds", [("15m", 900), ("2h", 7200), ("1h30m", 5400),
                                          ("90s", 90), ("900", 900), ("15min", 900)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_the_fmnist_presets_are_budgets_that_a_given_length_replaces():
    assert (preset("fmnist").time_budget, preset("fmnist-long").time_budget) == ("15m", "2h")
    for length in (dict(epochs=3), dict(steps=50)):
        cfg = preset("fmnist", **length)
        assert cfg.time_budget is None and (cfg.epochs, cfg.steps) == (
            length.get("epochs", cfg.epochs), length.get("steps"))
    assert preset("fmnist", time_budget="5m").time_budget == "5m"
    # a budgeted run does not show an --epochs it does not use
    assert "--epochs" in describe(preset("debug")) and "--epochs" not in describe(
        preset("debug", time_budget="5m"))


def test_plan_is_the_most_steps_that_fit():
    """100 s, 10 s spent after 25 steps of 100 an epoch; 0.1 s a step, 5 s a validation every
    2nd epoch and after the last, 3 s the test, 2 s kept: 675 steps take 65 + 4·5 + 5 = 90 s of
    the 90 left, 676 would not fit."""
    assert budget.plan_steps(100, 10, 25, 100, 2, 0.1, 5, 3, 2) == 675
    # validating only after the last epoch: 825 steps take 80 + 5 + 5 = 90 s
    assert budget.plan_steps(100, 10, 25, 100, 0, 0.1, 5, 3, 2) == 825
    with pytest.raises(ConfigError, match=r"too small for one epoch.*about 0m28s"):
        budget.plan_steps(20, 10, 25, 100, 2, 0.1, 5, 3, 2)


def test_timer_measures_inside_the_warm_up():
    timer = budget.StepTimer.in_warmup(0, warmup_steps=429)  # fmnist: one epoch of warm-up
    assert (timer.start_step, timer.end_step) == (107, 429)
    timer = budget.StepTimer.in_warmup(0, warmup_steps=5 * 1251)  # a long warm-up
    assert (timer.start_step, timer.end_step) == (125, 500)
    timer = budget.StepTimer.in_warmup(0, warmup_steps=36)
    assert (timer.start_step, timer.end_step) == (9, 36)
    timer = budget.StepTimer.in_warmup(100, warmup_steps=6)  # resumed after a short warm-up
    assert (timer.start_step, timer.end_step) == (106, 125)


FIRST_PLAN = budget.Plan(steps=1000, budget_s=100, timing=budget.Timing(
    step_ms=100.0, validation_s=1.0, test_s=1.0, elapsed_s=10.0, planned_at_step=50,
    steps_per_epoch=100))
EVERY_2ND = TrainConfig(eval_every=2, warmup_epochs=1)  # 100 steps of warm-up


def test_planning_again_follows_the_machine_and_keeps_the_rate_continuous():
    """At the end of epoch 3 (step 300; warm-up 100 steps; a validation every 2nd epoch, 1 s,
    the test 1 s, 13 s kept). Steps of 50 ms (52.5 counted) with 60 s left: 780 more steps
    take 40.95 + 5 validations + 1 + 13 = 59.95 s, 781 would not fit. Steps of 200 ms with 20 s
    left: 23 more (4.83 + 1 + 1 + 13 s). 5 s left: not even the test fits, the run ends now."""
    faster = budget.planned_again(FIRST_PLAN, 300, 0.05, 40.0, EVERY_2ND)
    slower = budget.planned_again(FIRST_PLAN, 300, 0.2, 80.0, EVERY_2ND)
    late = budget.planned_again(FIRST_PLAN, 300, 0.2, 95.0, EVERY_2ND)
    assert (faster.steps, slower.steps, late.steps) == (1080, 323, 300)
    for plan, step_ms, elapsed_s in ((faster, 50.0, 40.0), (slower, 200.0, 80.0)):
        assert plan.replans == (budget.Replan(300, step_ms, elapsed_s, plan.steps),)
        assert plan.timing == FIRST_PLAN.timing  # what the first plan measured stays
        # the rate at the step planned at is the old schedule's, then falls to 0 at the new end
        assert lr_at(300, 0.2, 100, plan.steps, plan.bend) == lr_at(300, 0.2, 100, 1000)
        rates = [lr_at(s, 0.2, 100, plan.steps, plan.bend)
                 for s in range(300, plan.steps + 1)]
        assert all(b < a for a, b in zip(rates, rates[1:])) and rates[-1] == 0.0
    # at step 500, 580 more steps take 30.45 + 4 validations + 1 + 13 s: with 48.5 s left the
    # count stays and so does the plan; with 49.5 s left 20 more steps fit
    assert budget.planned_again(faster, 500, 0.05, 51.5, EVERY_2ND) is faster
    again = budget.planned_again(faster, 500, 0.05, 50.5, EVERY_2ND)
    assert again.steps == 1100 and [r.at_step for r in again.replans] == [300, 500]
    assert (lr_at(500, 0.2, 100, again.steps, again.bend)
            == lr_at(500, 0.2, 100, faster.steps, faster.bend))
    # planned again in the warm-up: only the length changes
    early = budget.planned_again(FIRST_PLAN, 100, 0.05, 40.0,
                                  replace(EVERY_2ND, warmup_epochs=2))
    assert early.bend is None and early.steps == 880  # 780 more, as at step 300


def test_a_plan_is_kept_as_the_flat_dict_earlier_runs_wrote():
    """Checkpoints and results.json hold `to_dict`; a run from before the typed plan wrote the
    same keys, without `bend` and `replans` until its first plan again, and a tuple `bend`."""
    again = budget.planned_again(FIRST_PLAN, 300, 0.05, 40.0, EVERY_2ND)
    stored = again.to_dict()
    assert stored["steps"] == 1080 and stored["step_ms"] == 100.0 and stored["budget_s"] == 100
    assert stored["replans"] == [{"at_step": 300, "step_ms": 50.0, "elapsed_s": 40.0,
                                  "steps": 1080}]
    assert budget.Plan.from_dict(stored) == again
    assert budget.Plan.from_dict(json.loads(json.dumps(stored))) == again  # bend: a list there
    earlier = {"steps": 1000, "step_ms": 100.0, "validation_s": 1.0, "test_s": 1.0,
               "elapsed_s": 10.0, "planned_at_step": 50, "steps_per_epoch": 100,
               "image_size": None, "budget_s": 100}
    assert budget.Plan.from_dict(earlier) == FIRST_PLAN


def test_the_budget_answers_with_a_plan_and_leaves_the_run_alone(monkeypatch):
    """Warm-up 100 steps: the steps from 25 to 100 are timed, at 0.1 s (0.105 s planned). At
    step 100, 10 s spent of 100 s, a validation 1 s (1,000 images at 1 ms, no EMA) every 2nd
    epoch, the test 1 s, 13 s kept: 685 more steps take 71.925 + 4 + 1 + 13 = 89.925 s of the
    90 left, 686 would not fit."""
    monkeypatch.setattr(budget.StepTimer, "seconds_per_step", lambda self: 0.1)
    monkeypatch.setattr(budget, "elapsed_seconds", lambda run: 10.0)
    monkeypatch.setattr(budget, "evaluation_seconds_per_image", lambda run, batches: 1e-3)
    images = SimpleNamespace(num_images=1000)
    run = SimpleNamespace(cfg=replace(EVERY_2ND, time_budget="100s"), procs=Processes(),
                          step=0, warmup_steps=100, total_steps=None, steps_per_epoch=100,
                          plan=None, ema=None, data=SimpleNamespace(val=images, test=images,
                                                                    image_size=28))
    planner = budget.Budget(run)
    before = dict(vars(run))
    answers = []
    for step in range(1, 101):
        run.step = before["step"] = step
        answers.append(planner.after_step(run))
    assert answers[:-1] == [None] * 99 and vars(run) == before
    plan = answers[-1]
    assert plan == budget.Plan(steps=785, budget_s=100, timing=budget.Timing(
        step_ms=100.0, validation_s=1.0, test_s=1.0, elapsed_s=10.0, planned_at_step=100,
        steps_per_epoch=100, image_size=28))
    assert planner.after_step(run) is None  # timed again only from an epoch's start


def test_the_speed_cache_switched_off_is_neither_read_nor_written(tmp_path, monkeypatch):
    """A run of 0.5 s steps, 12 an epoch, timed at step 25 after 8 s: with the validation, the
    test and 10.3 s kept, 10 s cannot fit an epoch. Remembered, the next such run is refused at
    once; with NORMFREE_SPEED_CACHE=0 the record is not read, and none is written."""
    cfg, procs = preset("debug", time_budget="10s"), Processes()
    timing = budget.Timing(step_ms=500.0, validation_s=0.5, test_s=0.5, elapsed_s=8.0,
                           planned_at_step=25, steps_per_epoch=12, image_size=16)
    budget.remember_speed(cfg, procs, timing)
    with pytest.raises(ConfigError, match="measured by an earlier run of these settings"):
        budget.refuse_known_too_small(cfg, procs)
    monkeypatch.setenv("NORMFREE_SPEED_CACHE", "0")
    budget.refuse_known_too_small(cfg, procs)  # not read: no refusal
    monkeypatch.setenv("NORMFREE_CACHE", str(tmp_path / "fresh"))
    budget.remember_speed(cfg, procs, timing)
    assert not (tmp_path / "fresh").exists()
