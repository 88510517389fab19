"""Continual-learning metrics over the task phases of a run, and bootstrap confidence intervals.

Inputs: the episodes of a run — the global step at which each ended and its return — and its phases, the
``(start, end, task)`` intervals between task switches. Definitions (n phases, 1-based k):

- R_k: the mean return of the episodes that ended in the last 10 % of phase k's steps, the window
  (end − 0.1·(end − start), end] of global step counts (an episode that ends on the switch step ran on the
  old task and counts for the phase that ends there). NaN when no episode ended in that window, also when
  some ended earlier in the phase: an earlier return does not measure the end of the phase. NaNs are left
  out of every mean below (nan-aware means).
- P_k = R_k / R_ref, or (R_k − R_min) / (R_ref − R_min) for envs whose returns can be negative (R_min the
  env's floor). R_ref: what a fresh agent reaches in one phase — a lone run's own R_1; in a sweep, the
  mean over seeds of the baseline variant's R_1, one reference for every variant.
- P_late: the mean of P_k over the last ⌈n/2⌉ phases (for odd n the middle phase counts as late). Needs
  n ≥ 2.
- Slide S: mean R_k over the last w phases ÷ mean R_k over phases 2 … 1 + w, with w = ⌈(n − 1)/3⌉: the
  slow decline after the first switch, without the drop at it. Collapse: S ≤ 0.75; sustained: S ≥ 0.95.
  Needs n ≥ 4.
- Late/early: mean R_k over the last ⌈n/4⌉ phases ÷ mean over the first ⌈n/4⌉. Needs n ≥ 2.
  S and late/early are NaN where their denominator is ≤ 0 or NaN: a ratio of raw returns means nothing
  there (e.g. negative returns, where a worse late mean would read as a higher ratio).
- Forgetting, for a phase whose task occurred before: R at the end of that task's previous phase minus the
  mean return of the episodes that ended in the first 10 % of the new phase, (start, start + 0.1·(end −
  start)]; NaN for a task's first phase.
- Across seeds: the mean with a 95 % percentile-bootstrap confidence interval (10 000 resamples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def phase_returns(
    steps: Sequence[int], returns: Sequence[float], phases: Sequence[Phase], tail_fraction: float = 0.1
) -> np.ndarray:
    """R_k per phase: the mean return of the episodes that ended in (end − tail_fraction·(end − start), end];
    NaN where none did (even if episodes ended earlier in the phase)."""
    steps_, returns_ = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    return np.array(
        [_window_mean(steps_, returns_, end - tail_fraction * (end - start), end) for start, end, _ in phases]
    )


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def _ratio(numerator: float, denominator: float) -> float:
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


def slide(R: np.ndarray) -> float:
    """S = nan-mean R over the last w phases ÷ nan-mean over phases 2 … 1 + w (1-based), w = ⌈(n−1)/3⌉
    (n ≥ 4); NaN where the denominator is ≤ 0."""
    n = len(R)
    if n < 4:
        raise ValueError(f"the slide needs at least 4 phases, got {n}")
    w = math.ceil((n - 1) / 3)
    return _ratio(_nanmean(np.asarray(R[-w:])), _nanmean(np.asarray(R[1 : 1 + w])))


def late_early(R: np.ndarray) -> float:
    """Nan-mean R over the last ⌈n/4⌉ phases ÷ nan-mean over the first ⌈n/4⌉ (n ≥ 2); NaN where the
    denominator is ≤ 0."""
    n = len(R)
    if n < 2:
        raise ValueError(f"late/early needs at least 2 phases, got {n}")
    q = math.ceil(n / 4)
    return _ratio(_nanmean(np.asarray(R[-q:])), _nanmean(np.asarray(R[:q])))


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


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean across seeds and its percentile-bootstrap interval (Efron 1979): the
    (1 − confidence)/2 and (1 + confidence)/2 quantiles of the means of ``n_resamples`` resamples drawn with
    replacement, all at once. NaNs are dropped first; no value left gives (NaN, NaN, NaN), one gives
    (v, v, v). The same ``seed`` gives the same interval."""
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_resamples ≥ 1 and 0 < confidence < 1, got {n_resamples} and {confidence}")
    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    if len(data) == 0:
        return math.nan, math.nan, math.nan
    means = np.random.default_rng(seed).choice(data, size=(n_resamples, len(data)), replace=True).mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(data.mean()), float(low), float(high)


def _plain(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def summarize(
    steps: Sequence[int],
    returns: Sequence[float],
    phases: Sequence[Phase],
    R_ref: float | None = None,
    R_min: float | None = None,
) -> dict[str, Any]:
    """Every metric of the run as a JSON-ready dict (NaN → None): ``R``, ``P`` and ``forgetting`` per phase,
    ``R_ref`` (the run's own R_1 when None), ``R_min``, ``P_late``, ``slide``, ``late_early`` and
    ``forgetting_mean``; a metric the run has too few phases for is None, and every P is None when
    R_ref ≤ R_min (or 0)."""
    R = phase_returns(steps, returns, phases)
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
        "slide": _plain(slide(R)) if n >= 4 else None,
        "late_early": _plain(late_early(R)) if n >= 2 else None,
        "forgetting": [_plain(f) for f in forgotten],
        "forgetting_mean": _plain(_nanmean(forgotten)),
    }
