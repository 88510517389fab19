"""Continual-learning metrics over the task phases of a run, and bootstrap confidence intervals.

Inputs: the episodes of a run — the global step at which each ended and its return — and its phases, the
``(start, end, task)`` intervals between task switches. Definitions (n phases, 1-based k):

- R_k: the mean return of the episodes that ended in the last 10 % of phase k's steps (NaN when none did;
  NaNs are left out of every mean below).
- P_k = R_k / R_ref, or (R_k − R_min) / (R_ref − R_min) for envs whose returns can be negative (R_min the
  env's floor). R_ref: what a fresh agent reaches in one phase — a lone run's own R_1; in a sweep, the
  mean over seeds of the baseline variant's R_1, one reference for every variant.
- P_late: the mean of P_k over the last ⌈n/2⌉ phases.
- Slide S: mean R_k over the last w phases ÷ mean R_k over phases 2 … 1 + w, with w = ⌈(n − 1)/3⌉: the
  slow decline after the first switch, without the drop at it. Collapse: S ≤ 0.75; sustained: S ≥ 0.95.
  Needs n ≥ 4.
- Late/early: mean R_k over the last ⌈n/4⌉ phases ÷ mean over the first ⌈n/4⌉.
- Forgetting, for a phase whose task occurred before: R at the end of that task's previous phase minus the
  mean return of the episodes that ended in the first 10 % of the new phase.
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
    steps: Sequence[int], returns: Sequence[float], phases: Sequence[Phase], tail: float = 0.1
) -> np.ndarray:
    """R_k per phase: mean return of episodes ending in (end − tail·length, end]; NaN if none did."""
    steps_, returns_ = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    return np.array(
        [_window_mean(steps_, returns_, end - tail * (end - start), end) for start, end, _ in phases]
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


def slide(R: np.ndarray) -> float:
    """S = mean R over the last w phases ÷ mean over phases 2 … 1 + w, w = ⌈(n−1)/3⌉ (n ≥ 4)."""
    n = len(R)
    if n < 4:
        raise ValueError(f"the slide needs at least 4 phases, got {n}")
    w = math.ceil((n - 1) / 3)
    return _ratio(_nanmean(np.asarray(R[-w:])), _nanmean(np.asarray(R[1 : 1 + w])))


def late_early(R: np.ndarray) -> float:
    """Mean R over the last ⌈n/4⌉ phases ÷ mean over the first ⌈n/4⌉ (n ≥ 2)."""
    n = len(R)
    if n < 2:
        raise ValueError(f"late/early needs at least 2 phases, got {n}")
    q = math.ceil(n / 4)
    return _ratio(_nanmean(np.asarray(R[-q:])), _nanmean(np.asarray(R[:q])))


def forgetting(
    steps: Sequence[int], returns: Sequence[float], phases: Sequence[Phase], R: np.ndarray, head: float = 0.1
) -> np.ndarray:
    """Per phase: R of the same task's previous phase minus the mean return over the first ``head`` of
    this phase; NaN where the task is new."""
    steps_, returns_ = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    last_seen: dict[int, int] = {}
    values = np.full(len(phases), math.nan)
    for k, (start, end, task) in enumerate(phases):
        if task in last_seen:
            values[k] = R[last_seen[task]] - _window_mean(
                steps_, returns_, start, start + head * (end - start)
            )
        last_seen[task] = k
    return values


def bootstrap_ci(
    values: Sequence[float], resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean across seeds with a percentile bootstrap interval; NaNs are dropped."""
    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    if len(data) == 0:
        return math.nan, math.nan, math.nan
    means = np.random.default_rng(seed).choice(data, size=(resamples, len(data)), replace=True).mean(axis=1)
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
    """Every metric of the run as a JSON-ready dict (NaN → None); R_ref defaults to the run's own R_1."""
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
        "P_late": _plain(_nanmean(P[-math.ceil(n / 2) :])) if n else None,
        "slide": _plain(slide(R)) if n >= 4 else None,
        "late_early": _plain(late_early(R)) if n >= 2 else None,
        "forgetting": [_plain(f) for f in forgotten],
        "forgetting_mean": _plain(_nanmean(forgotten)),
    }
