"""Continual metrics on a synthetic return series whose answers are computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nested_ac.continual import (
    forgetting,
    iqm_and_mean,
    late_early,
    p_late,
    phase_returns,
    phases_from_switches,
    plasticity_ratios,
    probability_of_improvement,
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
    # An episode in the tail window: the earlier ones of the phase do not count.
    assert phase_returns([50, 95], [1.0, 3.0], [(0, 100, 0)], at_least=2)[0] == 3.0


def test_synchronised_copies_still_get_an_r_k():
    # 4 copies restarted together by a switch run 100-step episodes in step: every copy's episode ends on
    # the same global steps (each vector step is 4 global steps), here 400 and 800 of a 1000-step phase,
    # so the last 10 % (900, 1000] holds no episode end. R_k is then the mean of the last 4 (= copies)
    # episodes of the phase: the 4 that ended together at step 800, not the earlier ones at 400.
    steps = [400] * 4 + [800] * 4 + [1400] * 4 + [1800] * 4 + [1960]
    returns = [10.0, 20.0, 30.0, 40.0] + [100.0, 200.0, 300.0, 400.0] + [1.0] * 4 + [5.0] * 4 + [9.0]
    phases = [(0, 1000, 0), (1000, 2000, 1)]
    np.testing.assert_allclose(phase_returns(steps, returns, phases, at_least=4), [250.0, 9.0])
    # at_least=1 takes the last end step with every episode that ended on it (ties), the same 4 here.
    np.testing.assert_allclose(phase_returns(steps, returns, phases, at_least=1), [250.0, 9.0])
    # More copies than the last step holds: the window reaches back to the earlier end step of the phase,
    # and every episode that ended on that step counts (all 8).
    np.testing.assert_allclose(phase_returns(steps, returns, phases, at_least=6)[0], (100 + 1000) / 8)
    assert summarize(steps, returns, phases, copies=4)["R"] == [250.0, 9.0]
    # Only where no episode ended in the whole phase is R_k missing.
    assert math.isnan(phase_returns([400], [1.0], [(0, 1000, 0), (1000, 2000, 1)], at_least=4)[1])
    with pytest.raises(ValueError, match="at_least"):
        phase_returns(steps, returns, phases, at_least=0)


def test_an_episode_ending_on_the_switch_step_belongs_to_the_phase_that_ends_there():
    phases = [(0, 100, 0), (100, 200, 1), (200, 300, 0)]
    steps, returns = [100, 200, 210], [7.0, 5.0, 3.0]
    R = phase_returns(steps, returns, phases)
    # Step 200 is phase 2's tail, not phase 3's head; phase 3's tail (290, 300] is empty, so its R_k is
    # widened back to its last episode (step 210).
    np.testing.assert_allclose(R, [7.0, 5.0, 3.0])
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


def test_slide_and_late_early_use_the_floor_shift_of_p():
    R = np.array([-10.0, -50.0, -40.0, -20.0])  # n = 4: w = 1, q = 1
    assert slide(R, R_min=-100.0) == pytest.approx(80 / 50)  # (R_4 + 100) / (R_2 + 100)
    assert late_early(R, R_min=-100.0) == pytest.approx(80 / 90)
    P = plasticity_ratios(R, -10.0, R_min=-100.0)  # the same numbers as ratios of P_k: R_ref cancels
    assert slide(R, R_min=-100.0) == pytest.approx(P[3] / P[1])
    summary = summarize(STEPS, [r - 200 for r in RETURNS], PHASES, R_min=-200.0)  # returns shifted back
    assert summary["slide"] == pytest.approx(35 / 75) and summary["late_early"] == pytest.approx(35 / 90)


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
        iqm_and_mean([1.0, 2.0], confidence=1.0)


def test_iqm_and_mean_on_known_numbers():
    iqm, mean = iqm_and_mean([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0], reps=500)
    assert iqm.value == pytest.approx(4.5) and mean.value == pytest.approx(16.0)  # IQM: mean of 3, 4, 5, 6
    assert iqm.n == mean.n == 8 and iqm.low < 4.5 < iqm.high and mean.low < 16.0 < mean.high
    assert iqm.high < mean.high  # the outlier 100 moves the mean's resamples, hardly the IQM's
    assert iqm_and_mean([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0], reps=500) == (iqm, mean)  # seeded
    np.random.seed(1)
    before = np.random.get_state()[1].copy()
    iqm_and_mean([1.0, 2.0, 3.0], reps=50)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the caller's random stream kept
    wide, _ = iqm_and_mean([1.0, 2.0, 3.0, 4.0, 5.0], reps=500)
    narrow, _ = iqm_and_mean([1.0, 2.0, 3.0, 4.0, 5.0] * 20, reps=500)
    assert narrow.high - narrow.low < wide.high - wide.low


def test_one_value_has_no_interval():
    for estimate in iqm_and_mean([7.0, math.nan]):
        assert (estimate.value, estimate.low, estimate.high, estimate.n) == (7.0, None, None, 1)
    none, _ = iqm_and_mean([math.nan])
    assert math.isnan(none.value) and none.low is None and none.n == 0
    one = probability_of_improvement({0: 2.0, 1: 5.0}, {0: 1.0})
    assert (one.value, one.low, one.high, one.n) == (1.0, None, None, 1)


def test_probability_of_improvement():
    baseline = {seed: 0.3 + 0.02 * seed for seed in range(10)}
    dominating = {seed: 0.9 + 0.01 * seed for seed in range(10)}
    better = probability_of_improvement(dominating, baseline, reps=300)
    assert (better.value, better.low, better.high, better.n) == (1.0, 1.0, 1.0, 10)
    worse = probability_of_improvement(baseline, dominating, reps=300)
    assert (worse.value, worse.low, worse.high) == (0.0, 0.0, 0.0)
    assert probability_of_improvement(baseline, baseline, reps=300).value == 0.5
    # Only the shared seeds count (seed 3 of the baseline and seed 4's NaN are left out): of the 9 pairs of
    # (1, 2, 3) against (0.5, 3, 1.5), 5 are won and 1 tied: (5 + ½) / 9.
    variant, base = {0: 1.0, 1: 2.0, 2: 3.0, 4: math.nan}, {0: 0.5, 1: 3.0, 2: 1.5, 3: 100.0, 4: 0.0}
    mixed = probability_of_improvement(variant, base, reps=300)
    assert mixed.value == pytest.approx(5.5 / 9) and mixed.n == 3 and mixed.low < mixed.value < mixed.high
    with pytest.raises(ValueError, match="reps"):
        probability_of_improvement(dominating, baseline, reps=0)


def test_statistics_across_several_tasks():
    # IQM over the cells of a seeds × tasks matrix; a seed with a NaN in any task is dropped.
    scores = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, math.nan]])
    iqm, mean = iqm_and_mean(scores, reps=300)
    assert iqm.n == mean.n == 8 and mean.value == pytest.approx(13.75)
    assert iqm.value == pytest.approx(np.mean([3.0, 4.0, 10.0, 20.0]))  # the middle 50 % of 8 cells
    assert iqm.low < iqm.value < iqm.high
    # P(X > Y) averaged over tasks: X wins every pair in task A, loses every pair in task B.
    wins, losses = {s: 1.0 + s for s in range(6)}, {s: -1.0 - s for s in range(6)}
    zeros = {s: 0.0 for s in range(6)}
    both = probability_of_improvement([wins, losses], [zeros, zeros], reps=300)
    assert (both.value, both.low, both.high, both.n) == (0.5, 0.5, 0.5, 6)  # every resample: 1 and 0
    assert probability_of_improvement([wins, wins], [zeros, zeros], reps=300).value == 1.0
    # One task given as a list is the single-task statistic, interval included.
    assert probability_of_improvement([wins], [zeros], reps=300) == probability_of_improvement(
        wins, zeros, reps=300
    )
    # Only the seeds every task has for both count.
    partial = probability_of_improvement([wins, {0: 5.0, 1: 5.0}], [zeros, zeros], reps=300)
    assert partial.n == 2
