"""--time-budget: durations, the step plan, and a budgeted run that is stopped and resumed ends
as a run of the planned number of steps, bit for bit."""

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
from normfree.training.config import TrainConfig, parse_duration, preset
from normfree.training.loop import train

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


def test_plan_is_the_most_steps_that_fit():
    """100 s, 10 s spent after 25 steps of 100 an epoch; 0.1 s a step, 5 s a validation every
    2nd epoch and after the last, 3 s the test, 2 s kept: 675 steps take 65 + 4·5 + 5 = 90 s of
    the 90 left, 676 would not fit."""
    assert budget.plan_steps(100, 10, 25, 100, 2, 0.1, 5, 3, 2) == 675
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
    timer = budget.StepTimer(first_step=0, warmup_steps=429)  # fmnist: one epoch of warm-up
    assert (timer.start_step, timer.end_step) == (107, 429)
    timer = budget.StepTimer(first_step=0, warmup_steps=5 * 1251)  # a long warm-up
    assert (timer.start_step, timer.end_step) == (125, 500)
    timer = budget.StepTimer(first_step=0, warmup_steps=36)
    assert (timer.start_step, timer.end_step) == (9, 36)
    timer = budget.StepTimer(first_step=100, warmup_steps=6)  # resumed after a short warm-up
    assert (timer.start_step, timer.end_step) == (106, 125)


def test_budgeted_run_stopped_and_resumed_equals_a_run_of_its_steps(tmp_path, monkeypatch):
    # a fixed step time, so that the plan does not depend on how busy the machine is; the
    # budget leaves room for a slow start (compile, data) on a loaded machine
    monkeypatch.setattr(budget.StepTimer, "seconds_per_step", lambda self: 0.5)
    loop = importlib.import_module("normfree.training.loop")
    real_save = loop.save_checkpoint
    stop_at = random.Random(0).randrange(40, 70)  # after the plan (at step 36)

    def save_then_die(path, state):
        real_save(path, state)
        if state["step"] == stop_at:
            raise KeyboardInterrupt
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    cfg = preset("debug", epochs=16, time_budget="90s", warmup_epochs=3, checkpoint_every=1,
                 progress=False, out_dir=str(tmp_path / "budget"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    planned = json.loads((tmp_path / "budget" / "config.json").read_text())["steps"]
    stopped = load_checkpoint(tmp_path / "budget" / "checkpoint.pt")
    assert stopped["step"] == stop_at < planned and stopped["budget"]["planned_at_step"] == 36
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    resumed = train(replace(cfg, resume=True))  # does not measure again
    assert resumed["steps"] == planned and resumed["budget"]["steps"] == planned
    straight = train(replace(cfg, time_budget=None, steps=planned, checkpoint_every=0,
                             out_dir=str(tmp_path / "steps")))
    assert straight["steps"] == planned
    a = load_checkpoint(tmp_path / "budget" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "steps" / "checkpoint.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
