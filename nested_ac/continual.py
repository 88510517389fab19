"""Continual-learning metrics over the task phases of a run, and their statistics across seeds.

Inputs: the episodes of a run — the global step at which each ended and its return — and its phases, the
``(start, end, task)`` intervals between task switches. Definitions (n phases, 1-based k):

- R_k: the return the agent reaches at the end of phase k: the mean return of the episodes that ended in
  the last 10 % of the phase's steps, the window (end − 0.1·(end − start), end] of global step counts (an
  episode that ends on the switch step ran on the old task and counts for the phase that ends there).
  Where that window holds no episode end, it is widened backwards to the last N episodes that ended in
  the phase (N: the number of parallel copies; episodes ending on the same step as the N-th last count
  too). Copies synchronise: a change that makes every copy fail together restarts them together, and
  once they all reach the time limit every copy's episodes end on the same steps, so a short window can
  fall between two ends. The widened window then holds each copy's last episode, the end of the phase
  as the agent reached it. R_k is NaN only when no episode ended in the whole phase (an episode longer
  than a copy's share of the phase); NaNs are left out of every mean below (nan-aware means).
- P_k = R_k / R_ref, or (R_k − R_min) / (R_ref − R_min) for envs whose returns can be negative (R_min the
  env's floor). R_ref: what a fresh agent reaches in one phase — a lone run's own R_1; in a sweep, the
  mean over seeds of the baseline variant's R_1, one reference for every variant.
- P_late: the mean of P_k over the last ⌈n/2⌉ phases (for odd n the middle phase counts as late). Needs
  n ≥ 2.
- Slide S: mean R_k over the last w phases ÷ mean R_k over phases 2 … 1 + w, with w = ⌈(n − 1)/3⌉: the
  slow decline after the first switch, without the drop at it. Collapse: S ≤ 0.75; sustained: S ≥ 0.95.
  Needs n ≥ 4.
- Late/early: mean R_k over the last ⌈n/4⌉ phases ÷ mean over the first ⌈n/4⌉. Needs n ≥ 2.
  S and late/early use P_k's shift: both means are taken of R_k − R_min (R_min = 0 when the env has no
  floor), so they are defined on negative-return envs too (the ratio of the P_k means, R_ref cancels).
  They are NaN where the denominator is ≤ 0 or NaN (returns at or below 0 on an env without a floor).
- Forgetting, for a phase whose task occurred before: R at the end of that task's previous phase minus the
  mean return of the episodes that ended in the first 10 % of the new phase, (start, start + 0.1·(end −
  start)]; NaN for a task's first phase.
- Windows, for a world that drifts without tasks (``metrics.window`` = W steps): R_w, the mean return of
  the episodes that ended in (w·W, (w+1)·W]; P_w = (R_w − R_min)/(R_1 − R_min), against the first window;
  the late mean of P_w over the last ⌈n/2⌉ windows and the slide over windows, as for phases above.
- Across seeds (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021, with
  their ``rliable`` library): the interquartile mean (IQM) and the mean, each with a 95 % stratified-
  bootstrap confidence interval (10 000 resamples by default), and the probability of improvement
  P(X > Y) of a variant over a baseline with its interval. Seeds are paired — the same seed gives every
  variant the same task sequence — so P(X > Y) is computed on the seeds both have, and its bootstrap
  resamples seeds, each drawn seed bringing both its values. One value gives no interval (``low`` and
  ``high`` None), never a zero-width one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Phase = tuple[int, int, int]  # (start step, end step, task)


def phases_from_switches(switches: Sequence[tuple[int, int]], total_steps: int) -> list[Phase]:
    """Phases from the task clock's ``(step, task)`` switches (the first at step 0); the last ends at
    ``total_steps``. Switches at or past ``total_steps`` start no phase."""
    kept = [(step, task) for step, task in switches if step < total_steps]
    ends = [step for step, _ in kept[1:]] + [total_steps]
    return [(start, end, task) for (start, task), end in zip(kept, ends, strict=True)]


def _window_mean(steps: np.ndarray, returns: np.ndarray, low: float, high: float) -> float:
    inside = (steps > low) & (steps <= high)
    return float(returns[inside].mean()) if inside.any() else math.nan


def _end_of_phase_mean(
    steps: np.ndarray, returns: np.ndarray, start: int, end: int, tail_fraction: float, at_least: int
) -> float:
    """The mean return in the phase's tail window; if it is empty, of the last ``at_least`` episodes to end
    in the phase (ties on the edge step included); NaN if none ended in the phase."""
    tail = _window_mean(steps, returns, end - tail_fraction * (end - start), end)
    if not math.isnan(tail):
        return tail
    ends = np.sort(steps[(steps > start) & (steps <= end)])
    if not len(ends):
        return math.nan
    edge = ends[-min(at_least, len(ends))]
    return float(returns[(steps >= edge) & (steps <= end)].mean())


def phase_returns(
    steps: Sequence[int],
    returns: Sequence[float],
    phases: Sequence[Phase],
    tail_fraction: float = 0.1,
    at_least: int = 1,
) -> np.ndarray:
    """R_k per phase: the mean return of the episodes that ended in (end − tail_fraction·(end − start), end];
    where none did, of the last ``at_least`` episodes that ended in the phase (the run's number of
    parallel copies; ties on the edge step included); NaN only where no episode ended in the phase."""
    if at_least < 1:
        raise ValueError(f"at_least must be a positive number of episodes, got {at_least}")
    steps_, returns_ = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    return np.array(
        [
            _end_of_phase_mean(steps_, returns_, start, end, tail_fraction, at_least)
            for start, end, _ in phases
        ]
    )


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def _shifted_ratio(late: np.ndarray, early: np.ndarray, R_min: float | None) -> float:
    """nan-mean(late − R_min) ÷ nan-mean(early − R_min); NaN where the denominator is ≤ 0 or NaN."""
    floor = 0.0 if R_min is None else R_min
    numerator, denominator = _nanmean(late) - floor, _nanmean(early) - floor
    return numerator / denominator if denominator > 0 and not math.isnan(numerator) else math.nan


def plasticity_ratios(R: np.ndarray, R_ref: float, R_min: float | None = None) -> np.ndarray:
    """P_k = (R_k − R_min)/(R_ref − R_min) (R_min = 0 when None); a ValueError if R_ref ≤ R_min."""
    floor = 0.0 if R_min is None else R_min
    if not R_ref > floor:
        raise ValueError(f"the reference return R_ref = {R_ref} must exceed the floor {floor}")
    return (np.asarray(R, dtype=float) - floor) / (R_ref - floor)


def p_late(P: np.ndarray) -> float:
    """P_late = nan-mean of P_k over the last ⌈n/2⌉ phases (n ≥ 2): how much of a fresh agent's plasticity
    is left late in the run."""
    n = len(P)
    if n < 2:
        raise ValueError(f"P_late needs at least 2 phases, got {n}")
    return _nanmean(np.asarray(P[-math.ceil(n / 2) :], dtype=float))


def slide(R: np.ndarray, R_min: float | None = None) -> float:
    """S = nan-mean of R − R_min over the last w phases ÷ over phases 2 … 1 + w (1-based), w = ⌈(n−1)/3⌉
    (n ≥ 4; R_min = 0 when None); NaN where the denominator is ≤ 0."""
    n = len(R)
    if n < 4:
        raise ValueError(f"the slide needs at least 4 phases, got {n}")
    w = math.ceil((n - 1) / 3)
    return _shifted_ratio(np.asarray(R[-w:]), np.asarray(R[1 : 1 + w]), R_min)


def late_early(R: np.ndarray, R_min: float | None = None) -> float:
    """Nan-mean of R − R_min over the last ⌈n/4⌉ phases ÷ over the first ⌈n/4⌉ (n ≥ 2; R_min = 0 when
    None); NaN where the denominator is ≤ 0."""
    n = len(R)
    if n < 2:
        raise ValueError(f"late/early needs at least 2 phases, got {n}")
    q = math.ceil(n / 4)
    return _shifted_ratio(np.asarray(R[-q:]), np.asarray(R[:q]), R_min)


def forgetting(
    steps: Sequence[int],
    returns: Sequence[float],
    phases: Sequence[Phase],
    R: np.ndarray,
    head_fraction: float = 0.1,
) -> np.ndarray:
    """Per phase k: R of the same task's previous phase (from ``R``, the :func:`phase_returns` of
    ``phases``) minus the mean return of the episodes that ended in (start, start + head_fraction·(end −
    start)]; NaN where the task is new or either term is NaN."""
    steps_, returns_ = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    last_seen: dict[int, int] = {}
    values = np.full(len(phases), math.nan)
    for k, (start, end, task) in enumerate(phases):
        if task in last_seen:
            values[k] = R[last_seen[task]] - _window_mean(
                steps_, returns_, start, start + head_fraction * (end - start)
            )
        last_seen[task] = k
    return values


def window_phases(total_steps: int, window: int) -> list[Phase]:
    """The ``total_steps // window`` whole windows of ``window`` steps, ``(w·W, (w+1)·W, w)``; a rest
    shorter than a window is left out."""
    if window <= 0:
        raise ValueError(f"the window must be a positive number of steps, got {window}")
    return [(w * window, (w + 1) * window, w) for w in range(total_steps // window)]


def window_summary(
    steps: Sequence[int],
    returns: Sequence[float],
    total_steps: int,
    window: int,
    R_min: float | None = None,
) -> dict[str, Any]:
    """The windowed metrics of a world that drifts without tasks, JSON-ready (NaN →
    None): ``R``, R_w per window, the mean return of the episodes that ended in (w·W, (w+1)·W] (NaN where
    none did); ``P``, P_w = (R_w − R_min)/(R_1 − R_min) against the first window (R_min = 0 when None; all
    None where R_1 ≤ R_min or is missing); ``P_late``, the nan-mean of P_w over the last ⌈n/2⌉ windows
    (n ≥ 2); ``slide``, as :func:`slide` over windows (n ≥ 4); ``window`` and ``ends``, each window's last
    step."""
    phases = window_phases(total_steps, window)
    steps_, returns_ = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    R = np.array([_window_mean(steps_, returns_, start, end) for start, end, _ in phases])
    n = len(R)
    try:
        P = plasticity_ratios(R, float(R[0]) if n else math.nan, R_min)
    except ValueError:  # R_1 missing or at the floor: no ratio
        P = np.full(n, math.nan)
    return {
        "window": window,
        "ends": [end for _, end, _ in phases],
        "R": [_plain(r) for r in R],
        "P": [_plain(p) for p in P],
        "P_late": _plain(p_late(P)) if n >= 2 else None,
        "slide": _plain(slide(R, R_min)) if n >= 4 else None,
    }


@dataclass(frozen=True)
class Estimate:
    """A statistic across seeds: its value, its confidence interval (None with fewer than 2 values: no
    interval) and ``n``, the number of values that contributed."""

    value: float
    low: float | None
    high: float | None
    n: int


def stratified_bootstrap(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    reps: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) of ``statistic`` (a 1-D array) on ``scores`` (runs × tasks), with rliable's
    stratified bootstrap: each task's runs resampled with replacement, ``reps`` times; the interval is the
    percentile one, the (1 ∓ confidence)/2 quantiles of the resampled statistics, NaNs left out (a resample
    of only NaN cells, e.g. a curve point some runs did not reach, has no value). rliable draws the
    resamples from numpy's global generator; it is seeded with ``seed`` for the call and restored after, so
    the same seed gives the same interval and the caller's random stream is left alone."""
    from rliable import library

    if reps < 1 or not 0 < confidence < 1:
        raise ValueError(f"need reps ≥ 1 and 0 < confidence < 1, got {reps} and {confidence}")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # NaN cells (e.g. curve points a run did not reach)
            warnings.simplefilter("ignore", RuntimeWarning)
            bootstrap = library.StratifiedBootstrap(np.asarray(scores, dtype=float))
            resampled = bootstrap.apply(statistic, reps=reps)
            alpha = 100 * (1 - confidence) / 2
            low, high = np.nanpercentile(resampled, [alpha, 100 - alpha], axis=0)
            return np.asarray(statistic(np.asarray(scores, dtype=float))), low, high
    finally:
        np.random.set_state(state)


def iqm_and_mean(
    values: Sequence[float] | np.ndarray, reps: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[Estimate, Estimate]:
    """The interquartile mean (rliable's ``aggregate_iqm``: the mean of the middle 50 %) and the mean of
    ``values`` across seeds, NaNs dropped, each with its stratified-bootstrap interval (one resampling for
    both). ``values`` may also be a matrix, seeds × tasks (several worlds of a suite): both statistics are
    then over every cell, each task's seeds resampled within it (a seed with a NaN in any task is
    dropped); ``n`` counts the cells."""
    from rliable import metrics

    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)][:, None] if data.ndim == 1 else data[~np.isnan(data).any(axis=1)]
    if data.size < 2:
        value = float(data.flat[0]) if data.size else math.nan
        return Estimate(value, None, None, data.size), Estimate(value, None, None, data.size)

    def both(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)])

    point, low, high = stratified_bootstrap(data, both, reps, confidence, seed)
    iqm, mean = (Estimate(float(point[i]), float(low[i]), float(high[i]), data.size) for i in range(2))
    return iqm, mean


def probability_of_improvement(
    variant: Mapping[int, float] | Sequence[Mapping[int, float]],
    baseline: Mapping[int, float] | Sequence[Mapping[int, float]],
    reps: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """P(X > Y) of ``variant`` over ``baseline`` (values by seed) on the seeds where both are defined:
    rliable's probability of improvement (the Mann-Whitney U statistic over every pair of a variant run
    and a baseline run, divided by the number of pairs; ties count ½). Its interval is a paired bootstrap:
    seeds are resampled, each drawn seed bringing its variant and its baseline value (the same seed gives
    both the same tasks). With one mapping per task (the worlds of a suite) it is rliable's average over
    tasks of each task's P(X > Y), on the seeds every task has for both, each task's seeds resampled
    within it; ``n`` counts the seeds."""
    from rliable import metrics

    variants = [variant] if isinstance(variant, Mapping) else list(variant)
    baselines = [baseline] if isinstance(baseline, Mapping) else list(baseline)
    shared = sorted(
        set.intersection(
            *(
                {s for s in set(v) & set(b) if not (math.isnan(v[s]) or math.isnan(b[s]))}
                for v, b in zip(variants, baselines, strict=True)
            )
        )
    )
    x = np.array([[v[s] for v in variants] for s in shared], dtype=float).reshape(len(shared), len(variants))
    y = np.array([[b[s] for b in baselines] for s in shared], dtype=float).reshape(x.shape)
    tasks = np.arange(len(variants))

    def improvement(picked: np.ndarray) -> np.ndarray:
        seeds = picked.astype(int)  # seeds × tasks: each task's resampled seeds
        return np.array([metrics.probability_of_improvement(x[seeds, tasks], y[seeds, tasks])])

    if len(shared) < 2:
        value = float(improvement(np.zeros((1, len(tasks))))[0]) if shared else math.nan
        return Estimate(value, None, None, len(shared))
    picks = np.tile(np.arange(len(shared))[:, None], (1, len(tasks)))
    point, low, high = stratified_bootstrap(picks, improvement, reps, confidence, seed)
    return Estimate(float(point[0]), float(low[0]), float(high[0]), len(shared))


def _plain(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def summarize(
    steps: Sequence[int],
    returns: Sequence[float],
    phases: Sequence[Phase],
    R_ref: float | None = None,
    R_min: float | None = None,
    copies: int = 1,
) -> dict[str, Any]:
    """Every metric of the run as a JSON-ready dict (NaN → None): ``R``, ``P`` and ``forgetting`` per phase,
    ``R_ref`` (the run's own R_1 when None), ``R_min``, ``P_late``, ``slide``, ``late_early`` and
    ``forgetting_mean``; a metric the run has too few phases for is None, and every P is None when
    R_ref ≤ R_min (or 0). ``copies``: the run's number of parallel env copies (R_k's widened window)."""
    R = phase_returns(steps, returns, phases, at_least=copies)
    reference = R_ref if R_ref is not None else (float(R[0]) if len(R) else math.nan)
    try:
        P = plasticity_ratios(R, reference, R_min)
    except ValueError:
        P = np.full(len(R), math.nan)
    n = len(R)
    forgotten = forgetting(steps, returns, phases, R)
    return {
        "phases": [list(phase) for phase in phases],
        "R": [_plain(r) for r in R],
        "R_ref": _plain(reference),
        "R_min": R_min,
        "P": [_plain(p) for p in P],
        "P_late": _plain(p_late(P)) if n >= 2 else None,
        "slide": _plain(slide(R, R_min)) if n >= 4 else None,
        "late_early": _plain(late_early(R, R_min)) if n >= 2 else None,
        "forgetting": [_plain(f) for f in forgotten],
        "forgetting_mean": _plain(_nanmean(forgotten)),
    }
