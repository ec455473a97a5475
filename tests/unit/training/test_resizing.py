"""Progressive resizing (--small-image-scale): which steps run small, what the budget planner
counts them as, the timer's accounting and the downscaling filter (a run:
tests/e2e/test_resizing_runs.py)."""

import pytest
import torch

from normfree.training import budget
from normfree.training.config import TrainConfig
from normfree.training.resizing import (downscaled, full_size_steps, is_small, pixel_share,
                                        small_size)


SMALL = TrainConfig(small_image_scale=0.7, small_image_until=0.3)  # 28 → 20 px


def test_small_steps_cost_their_share_of_the_pixels():
    """Warm-up 100, 1000 steps: the cosine reaches 0.3 at step 100 + 0.3 · 900 = 370, so the
    steps after 0 … 369 run small (370 of them), each costing 400/784 of a 28 px step."""
    assert pixel_share(20, 28) == 400 / 784 and small_size(SMALL, 28) == 20
    assert (small_size(SMALL, 224), small_size(TrainConfig(small_image_scale=0.01), 28)) == (157, 1)
    assert full_size_steps(SMALL, 28, 0, 1000, 100) == pytest.approx(1000 - 370 * 384 / 784)
    assert [is_small(SMALL, k, 100, 1000) for k in (0, 99, 369, 370)] == [True] * 3 + [False]
    # before a budgeted run's first plan the length is unknown: small
    assert is_small(SMALL, 500, 100, None) and is_small(SMALL, 500, 100, float("inf"))
    assert full_size_steps(TrainConfig(), 28, 10, 1000, 100) == 990
    assert not is_small(TrainConfig(), 0, 100, 1000)


@pytest.mark.parametrize("until,step,bend", [(0.3, 50, None), (0.5, 300, (300, 0.2)),
                                             (0.3, 300, (300, 0.4)), (1.0, 0, None),
                                             (0.25, 700, (650, 0.1))])
def test_the_planner_counts_the_small_steps_the_loop_runs(until, step, bend):
    cfg = TrainConfig(small_image_scale=0.7, small_image_until=until)
    for total in (800, 1000, 1337):
        small = sum(is_small(cfg, k, 100, total, bend) for k in range(step, total))
        assert full_size_steps(cfg, 28, step, total, 100, bend) == pytest.approx(
            total - step - small * (1 - pixel_share(20, 28)))


def test_cheaper_steps_plan_more_of_them():
    """As in test_plan_is_the_most_steps_that_fit, but every step costs half a full-size one:
    1125 steps take 0.05 · 1100 + 6 validations · 5 + 3 + 2 = 90 s of the 90 left."""
    assert budget.plan_steps(100, 10, 25, 100, 2, 0.1, 5, 3, 2,
                             full_steps=lambda total: 0.5 * (total - 25)) == 1125


def test_timer_counts_full_size_steps_and_not_a_step_that_compiled(monkeypatch):
    clock = iter([0.0, 1.0, 1.5, 11.5, 12.5, 13.0])  # step 4 compiled a new size: 10 s
    monkeypatch.setattr(budget.time, "perf_counter", lambda: next(clock))
    timer = budget.StepTimer(1, 6)
    for step, cost, compiled in [(1, 0.5, True), (2, 0.5, False), (3, 0.5, False),
                                 (4, 1.0, True), (5, 1.0, False)]:
        assert not timer.after_step(step, cost, compiled)
    assert timer.after_step(6, 1.0)
    # steps 2, 3, 5, 6: 1 + 0.5 + 1 + 0.5 s for 0.5 + 0.5 + 1 + 1 full-size steps
    assert timer.seconds_per_step() == 3.0 / 3.0
    assert budget.StepTimer(1, 2).seconds_per_step() is None  # nothing timed: no plan from it


def test_downscaling_filters_instead_of_sampling():
    """28 → 20 px: a pixel checkerboard (finer than 20 px can show) becomes a near-uniform grey,
    where sampling without antialiasing keeps pure black and white pixels; a flat image stays
    flat."""
    board = ((torch.arange(28)[:, None] + torch.arange(28)) % 2).float().expand(2, 3, 28, 28)
    small = downscaled(board, 20)
    assert small.shape == (2, 3, 20, 20) and 0.44 < small.min() <= small.max() < 0.56
    sampled = torch.nn.functional.interpolate(board, size=(20, 20), mode="bilinear")
    assert (sampled.min(), sampled.max()) == (0.0, 1.0)
    assert torch.allclose(downscaled(torch.full((1, 1, 28, 28), 0.7), 20), torch.tensor(0.7))
