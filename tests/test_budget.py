"""--time-budget: durations, the step plan and the plans after it, and a budgeted run that is
stopped and resumed ends as an uninterrupted one, bit for bit."""

import importlib
import json
import random
import time
from dataclasses import replace

import pytest
import torch

from normfree.errors import ConfigError
from normfree.training import budget
from normfree.training.checkpoints import load_checkpoint
from normfree.training.config import TrainConfig, describe, parse_duration, preset
from normfree.training.loop import train
from normfree.training.optim import lr_at
from normfree.training.resizing import is_small

from test_user_errors import assert_refused, cli


@pytest.mark.parametrize("text,seconds", [("15m", 900), ("2h", 7200), ("1h30m", 5400),
                                          ("90s", 90), ("900", 900), ("15min", 900)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "15 parsecs", "", "m"])
def test_bad_budgets_are_refused_naming_the_flag(text, tmp_path, capsys):
    with pytest.raises(ConfigError, match="--time-budget must be a duration like 15m"):
        TrainConfig(time_budget=text)
    code, _, err = cli(capsys, "train", "--preset", "debug", f"--time-budget={text}",
                       "--out-dir", tmp_path / "run")
    assert_refused(code, err, "--time-budget")
    assert not (tmp_path / "run").exists()


def test_epochs_and_budget_are_exclusive(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--epochs", "3", "--time-budget", "5m",
                       "--out-dir", tmp_path / "run")
    assert_refused(code, err, "--epochs and --time-budget both set the run's length")


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


def test_a_budget_an_earlier_run_measured_too_small_is_refused_before_data_is_read(
        tmp_path, monkeypatch):
    monkeypatch.setattr(budget.StepTimer, "seconds_per_step", lambda self: 0.5)
    cfg = preset("debug", time_budget="40s", progress=False, out_dir=str(tmp_path / "first"))
    train(cfg)  # plans ~50 steps of 0.5 s: records the speed of these settings
    [measured] = json.loads(budget.speed_record_path().read_text()).values()
    assert measured["step_ms"] == 500 and measured["steps_per_epoch"] == 12
    loop = importlib.import_module("normfree.training.loop")

    def read_data(*args):
        raise AssertionError("the data was read")
    monkeypatch.setattr(loop, "build_run", read_data)
    # the 25 steps timed already pass an epoch of 12; with a validation, the test and 10 s + 3 %
    # kept, more than 10 s
    for seed in (0, 1):  # the seed does not change the speed
        with pytest.raises(ConfigError, match=r"--time-budget 0m10s is too small for one epoch.*"
                           r"smallest budget that works is about 0m1\ds \(measured by an "
                           r"earlier run"):
            train(replace(cfg, time_budget="10s", seed=seed, out_dir=str(tmp_path / "second")))
    assert not (tmp_path / "second").exists()
    procs = loop.distributed.Processes()
    assert budget.speed_key(cfg, procs) == budget.speed_key(replace(cfg, seed=5, lr=1.0), procs)
    assert budget.speed_key(cfg, procs) != budget.speed_key(replace(cfg, batch_size=64), procs)


def test_the_step_time_does_not_count_the_timing_of_evaluation(tmp_path, monkeypatch):
    def slow_evaluation(*args):
        time.sleep(2.0)  # ~100 ms over each of the 19 timed steps, were it counted
        return 1e-3
    monkeypatch.setattr(budget, "evaluation_seconds_per_image", slow_evaluation)
    result = train(preset("debug", time_budget="60s", progress=False, out_dir=str(tmp_path)))
    assert result["budget"]["planned_at_step"] == 25 and result["budget"]["step_ms"] < 80


def test_timer_measures_inside_the_warm_up():
    timer = budget.StepTimer.in_warmup(0, warmup_steps=429)  # fmnist: one epoch of warm-up
    assert (timer.start_step, timer.end_step) == (107, 429)
    timer = budget.StepTimer.in_warmup(0, warmup_steps=5 * 1251)  # a long warm-up
    assert (timer.start_step, timer.end_step) == (125, 500)
    timer = budget.StepTimer.in_warmup(0, warmup_steps=36)
    assert (timer.start_step, timer.end_step) == (9, 36)
    timer = budget.StepTimer.in_warmup(100, warmup_steps=6)  # resumed after a short warm-up
    assert (timer.start_step, timer.end_step) == (106, 125)


FIRST_PLAN = {"steps": 1000, "budget_s": 100, "steps_per_epoch": 100, "validation_s": 1.0,
              "test_s": 1.0, "step_ms": 100.0, "elapsed_s": 10.0, "planned_at_step": 50}
EVERY_2ND = TrainConfig(eval_every=2, warmup_epochs=1)  # 100 steps of warm-up


def test_planning_again_follows_the_machine_and_keeps_the_rate_continuous():
    """At the end of epoch 3 (step 300; warm-up 100 steps; a validation every 2nd epoch, 1 s,
    the test 1 s, 13 s kept). Steps of 50 ms (52.5 counted) with 60 s left: 780 more steps
    take 40.95 + 5 validations + 1 + 13 = 59.95 s, 781 would not fit. Steps of 200 ms with 20 s
    left: 23 more (4.83 + 1 + 1 + 13 s). 5 s left: not even the test fits, the run ends now."""
    faster = budget.planned_again(FIRST_PLAN, 300, 0.05, 40.0, EVERY_2ND)
    slower = budget.planned_again(FIRST_PLAN, 300, 0.2, 80.0, EVERY_2ND)
    late = budget.planned_again(FIRST_PLAN, 300, 0.2, 95.0, EVERY_2ND)
    assert (faster["steps"], slower["steps"], late["steps"]) == (1080, 323, 300)
    for plan in (faster, slower):
        assert plan["replans"] == [{"at_step": 300, "step_ms": plan["replans"][0]["step_ms"],
                                    "elapsed_s": plan["replans"][0]["elapsed_s"],
                                    "steps": plan["steps"]}]
        # the rate at the step planned at is the old schedule's, then falls to 0 at the new end
        assert lr_at(300, 0.2, 100, plan["steps"], plan["bend"]) == lr_at(300, 0.2, 100, 1000)
        rates = [lr_at(s, 0.2, 100, plan["steps"], plan["bend"])
                 for s in range(300, plan["steps"] + 1)]
        assert all(b < a for a, b in zip(rates, rates[1:])) and rates[-1] == 0.0
    # at step 500, 580 more steps take 30.45 + 4 validations + 1 + 13 s: with 48.5 s left the
    # count stays and so does the plan; with 49.5 s left 20 more steps fit
    assert budget.planned_again(faster, 500, 0.05, 51.5, EVERY_2ND) is faster
    again = budget.planned_again(faster, 500, 0.05, 50.5, EVERY_2ND)
    assert again["steps"] == 1100 and [r["at_step"] for r in again["replans"]] == [300, 500]
    assert (lr_at(500, 0.2, 100, again["steps"], again["bend"])
            == lr_at(500, 0.2, 100, faster["steps"], faster["bend"]))
    # planned again in the warm-up: only the length changes
    early = budget.planned_again(FIRST_PLAN, 100, 0.05, 40.0,
                                  replace(EVERY_2ND, warmup_epochs=2))
    assert early["bend"] is None and early["steps"] == 880  # 780 more, as at step 300


@pytest.mark.parametrize("small_image_scale", [None, 0.5])
def test_budgeted_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                      small_image_scale):
    # The clock is a function of the step, so that both runs time the same: the first plan
    # from 0.5 s a step (at step 36, the end of the warm-up), then the epochs run at 0.3 s and
    # each plan after one lengthens the run. Real timings move; with equal ones the plans and
    # the weights are equal, bit for bit, wherever the run was stopped; with progressive
    # resizing too, whose switch moves with the plans.
    monkeypatch.setattr(budget.StepTimer, "seconds_per_step",
                        lambda self: 0.5 if self.start_step < 36 else 0.3)
    monkeypatch.setattr(budget, "elapsed_seconds",
                        lambda run: 5.0 + 0.5 * min(run.step, 36) + 0.3 * max(run.step - 36, 0))
    monkeypatch.setattr(budget, "evaluation_seconds_per_image", lambda *args: 1e-4)
    loop = importlib.import_module("normfree.training.loop")
    real_save = loop.save_checkpoint
    stop_at = random.Random(0).randrange(49, 80)  # after the first plan again (at step 48)

    def save_then_die(path, state, **kwargs):
        real_save(path, state, **kwargs)
        if state.step == stop_at:
            raise KeyboardInterrupt
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    cfg = preset("debug", time_budget="60s", warmup_epochs=3, checkpoint_every=1,
                 small_image_scale=small_image_scale, small_image_until=0.5, progress=False,
                 out_dir=str(tmp_path / "stopped"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    stopped = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert stopped["step"] == stop_at and stopped["budget"]["planned_at_step"] == 36
    assert stopped["budget"]["replans"][0]["at_step"] == 48
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    resumed = train(replace(cfg, resume=True))  # does not measure the first plan again
    straight = train(replace(cfg, checkpoint_every=0, out_dir=str(tmp_path / "straight")))
    assert resumed["budget"] == straight["budget"] and resumed["steps"] == straight["steps"]
    replans = straight["budget"]["replans"]
    assert len(replans) >= 3 and straight["steps"] == replans[-1]["steps"]
    if small_image_scale:  # stopped on small images, resumed across the switch to full size
        plan = stopped["budget"]
        switch = next(k for k in range(plan["steps"]) if not is_small(
            cfg, k, 36, plan["steps"], plan.get("bend")))
        assert stop_at < switch < straight["steps"]
    else:  # the epochs after the first plan ran faster than timed: each plan lengthens the run
        assert replans[-1]["steps"] > replans[0]["steps"] > straight["budget"]["planned_at_step"]
    a = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
