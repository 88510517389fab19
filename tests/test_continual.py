"""Continual metrics on a synthetic return series whose answers are computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nested_ac.continual import (
    bootstrap_ci,
    forgetting,
    late_early,
    p_late,
    phase_returns,
    phases_from_switches,
    plasticity_ratios,
    slide,
    summarize,
)

# 7 phases of 100 steps, tasks A B A B A B A (0, 1, ...). Per phase: an episode ends at step start + 5
# (head window: first 10 steps) with return `head`, and one at start + 95 (tail window) with return `tail`.
TAILS = [100.0, 80.0, 70.0, 60.0, 50.0, 40.0, 30.0]
HEADS = [0.0, 10.0, 40.0, 20.0, 30.0, 25.0, 35.0]
PHASES = phases_from_switches([(100 * k, k % 2) for k in range(7)], 700)
STEPS = [s for k in range(7) for s in (100 * k + 5, 100 * k + 95)]
RETURNS = [r for k in range(7) for r in (HEADS[k], TAILS[k])]


def test_phases_from_switches():
    assert PHASES[:2] == [(0, 100, 0), (100, 200, 1)] and PHASES[-1] == (600, 700, 0)
    assert phases_from_switches([(0, 0), (500, 1)], 500) == [
        (0, 500, 0)
    ]  # a switch at the end starts nothing


def test_phase_returns_use_the_last_tenth_of_each_phase():
    np.testing.assert_allclose(phase_returns(STEPS, RETURNS, PHASES), TAILS)
    assert math.isnan(phase_returns([50], [1.0], [(0, 100, 0)])[0])  # no episode ended in (90, 100]


def test_an_episode_ending_on_the_switch_step_belongs_to_the_phase_that_ends_there():
    phases = [(0, 100, 0), (100, 200, 1), (200, 300, 0)]
    steps, returns = [100, 200, 210], [7.0, 5.0, 3.0]
    R = phase_returns(steps, returns, phases)
    np.testing.assert_allclose(R, [7.0, 5.0, math.nan])  # step 200 is phase 2's tail, not phase 3's head
    np.testing.assert_allclose(forgetting(steps, returns, phases, R), [math.nan, math.nan, 7.0 - 3.0])
    assert math.isnan(forgetting([100], [7.0], phases, R)[2])  # no episode in phase 3's head (200, 210]


def test_ratios_slide_late_early_forgetting():
    R = phase_returns(STEPS, RETURNS, PHASES)
    np.testing.assert_allclose(plasticity_ratios(R, 100.0), np.array(TAILS) / 100)
    np.testing.assert_allclose(plasticity_ratios(R, 100.0, R_min=-100.0), (np.array(TAILS) + 100) / 200)
    # n = 7: w = ceil(6/3) = 2; late = mean(R6, R7) = 35, early = mean(R2, R3) = 75.
    assert slide(R) == pytest.approx(35 / 75)
    # q = ceil(7/4) = 2: mean(R6, R7) / mean(R1, R2) = 35 / 90.
    assert late_early(R) == pytest.approx(35 / 90)
    # Phase 3 (task A again): R_1 − head_3 = 100 − 40; phase 4 (task B): R_2 − 20 = 60; ...
    expected = [math.nan, math.nan, 60.0, 60.0, 40.0, 35.0, 15.0]
    np.testing.assert_allclose(forgetting(STEPS, RETURNS, PHASES, R), expected)


def test_p_late_uses_the_last_half_rounded_up():
    assert p_late(np.array([1.0, 0.5])) == 0.5
    assert p_late(np.array([1.0, 0.9, 0.8, 0.7, 0.6])) == pytest.approx(0.7)  # last ceil(5/2) = 3
    assert p_late(np.array([1.0, 0.8, math.nan, 0.4])) == pytest.approx(0.4)  # NaN left out


def test_ratios_of_non_positive_early_returns_are_nan():
    assert math.isnan(slide(np.array([-10.0, -50.0, -40.0, -20.0])))
    assert math.isnan(late_early(np.array([0.0, 5.0])))


def test_summary_is_json_ready():
    summary = summarize(STEPS, RETURNS, PHASES)
    assert summary["R_ref"] == 100.0 and summary["P"][0] == 1.0
    assert summary["P_late"] == pytest.approx(np.mean([0.6, 0.5, 0.4, 0.3]))  # last ceil(7/2) = 4 phases
    assert summary["slide"] == pytest.approx(35 / 75)
    assert summary["forgetting"][0] is None and summary["forgetting_mean"] == pytest.approx(42.0)
    short = summarize([95], [5.0], [(0, 100, 0)])
    assert short["slide"] is None and short["late_early"] is None and short["P_late"] is None
    json.dumps(summary, allow_nan=False)
    assert summarize([50, 95], [0.0, 2.0], [(0, 50, 0), (50, 100, 1)])["P"] == [None, None]  # R_1 = 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 4 phases"):
        slide(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="must exceed the floor"):
        plasticity_ratios(np.array([1.0]), 0.0)
    with pytest.raises(ValueError, match="must exceed the floor -5"):
        plasticity_ratios(np.array([1.0]), -6.0, R_min=-5.0)
    with pytest.raises(ValueError, match="at least 2 phases"):
        p_late(np.array([1.0]))
    with pytest.raises(ValueError, match="at least 2 phases"):
        late_early(np.array([1.0]))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.0)


def test_bootstrap_ci():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, low, high = bootstrap_ci(values)
    assert mean == 3.0 and low < 3.0 < high and bootstrap_ci(values) == (mean, low, high)
    _, wide_low, wide_high = bootstrap_ci(values)
    _, narrow_low, narrow_high = bootstrap_ci(values * 20)
    assert narrow_high - narrow_low < wide_high - wide_low
    assert bootstrap_ci([7.0]) == (7.0, 7.0, 7.0)
    assert bootstrap_ci([1.0, math.nan, 3.0])[0] == 2.0
    assert all(math.isnan(x) for x in bootstrap_ci([math.nan]))
