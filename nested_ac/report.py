"""``nested-ac report``: tables and plots of many runs, grouped by configuration, with rliable's statistics.

A run is a directory with ``config.yaml``; its continual metrics come from ``summary.json`` (written when
the run finishes) and its curves from its TensorBoard event files (several after a resume). Runs whose
configurations differ only in seed, name and directory form one group, labelled by the directory that
holds them (a sweep's variant) or, for lone runs, by their name. One reference R_ref for every group of
the same environment and schedule: the mean over seeds of the reference group's R_1 (``--reference``;
default: the group with agent ppo, optimizer adam and no plasticity tool), so a variant that learns slowly
is not flattered; groups without a matching reference keep their own R_1 and the report says so. The
reference group is also the baseline of the probability of improvement, paired by seed (see
:mod:`nested_ac.continual`).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nested_ac import rundir
from nested_ac.build import enabled_tools
from nested_ac.config import OptimizerConfig, RunConfig, resolve_config
from nested_ac.continual import (
    Estimate,
    iqm_and_mean,
    late_early,
    p_late,
    plasticity_ratios,
    probability_of_improvement,
    slide,
    stratified_bootstrap,
)
from nested_ac.errors import ConfigError

RETURN_TAG = "episode/return"
DIAGNOSTIC_TAGS = ("plasticity/actor/dormant", "plasticity/actor/srank")
IDENTITY_KEYS = ("seed", "name", "run_dir", "progress_bar", "report")
BAND_REPS = 1_000  # resamples per point of a figure's band
COLLAPSED_AT, SUSTAINED_AT = 0.7, 0.9  # P_late at or below: collapsed; at or above: sustained


@dataclass
class Run:
    path: Path
    config: RunConfig
    summary: dict[str, Any]
    scalars: dict[str, list[tuple[int, float]]]


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def config(self) -> RunConfig:
        return self.runs[0].config

    def environment(self) -> tuple[str, str]:
        """What must match for a shared reference: the env and its schedule."""
        return self.config.env.id, json.dumps(self.config.to_dict()["env"]["schedule"], sort_keys=True)


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file of ``run_dir``, by tag, sorted by step; raises on a corrupt file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for event_file in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(points) for tag, points in scalars.items()}


def intact(event_file: Path) -> bool:
    """Whether ``event_file``'s records (8-byte length, 4-byte CRC, data, 4-byte CRC) end exactly at the
    end of the file; TensorBoard's reader stops silently at a truncated or garbled record."""
    data, offset = event_file.read_bytes(), 0
    while offset < len(data):
        if offset + 12 > len(data):
            return False
        offset += 12 + int.from_bytes(data[offset : offset + 8], "little") + 4
    return offset == len(data)


def find_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[str]]:
    """The readable runs under ``paths`` and a note for each run skipped."""
    runs, skipped = [], []
    for directory in rundir.find_runs(paths):
        try:
            config = resolve_config(directory / rundir.CONFIG_FILE)
        except ConfigError as error:
            skipped.append(f"{directory}: unreadable config.yaml ({error})")
            continue
        summary = rundir.read_json(directory, rundir.SUMMARY_FILE)
        if summary is None:
            skipped.append(f"{directory}: no {rundir.SUMMARY_FILE} (the run has not finished)")
            continue
        try:
            scalars = read_scalars(directory)
        except Exception as error:  # noqa: BLE001  (a truncated or corrupt event file skips the run)
            skipped.append(f"{directory}: unreadable TensorBoard events ({type(error).__name__}: {error})")
            continue
        for event_file in sorted(directory.glob("events.out.tfevents.*")):
            if not intact(event_file):
                skipped.append(f"{event_file}: truncated or corrupt; its curves are read up to the damage")
        runs.append(Run(directory, config, summary, scalars))
    return runs, skipped


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by configuration (seed, name and directory aside); labels are unique within each
    environment (a suite's worlds each have their ``ppo-adam``)."""
    groups: dict[str, Group] = {}
    for run in runs:
        identity = {k: v for k, v in run.config.to_dict().items() if k not in IDENTITY_KEYS}
        key = json.dumps(identity, sort_keys=True, default=str)
        if key not in groups:
            parent = Path(run.config.run_dir).name
            group = Group(parent if parent not in ("runs", "") else run.config.name or run.path.name)
            group.runs.append(run)
            taken = {g.label for g in groups.values() if g.environment() == group.environment()}
            suffix = 2
            while group.label in taken:
                group.label, suffix = f"{group.label.rsplit('#', 1)[0]}#{suffix}", suffix + 1
            groups[key] = group
        else:
            groups[key].runs.append(run)
    return list(groups.values())


def by_world(groups: list[Group]) -> dict[str, list[Group]]:
    """The groups of each environment and schedule (a world), named by the env id without its namespace,
    with the schedule added where one env runs under several."""
    worlds: dict[tuple[str, str], list[Group]] = {}
    for group in groups:
        worlds.setdefault(group.environment(), []).append(group)
    ids = [env_id for env_id, _ in worlds]
    return {
        env_id.rpartition("/")[2] + (f" {schedule}" if ids.count(env_id) > 1 else ""): members
        for (env_id, schedule), members in worlds.items()
    }


def _is_baseline(config: RunConfig) -> bool:
    """PPO with Adam at its default settings, no plasticity tool that changes training (diagnostics only
    observe): the default reference group."""
    tools_off = not any(tool.changes_training for tool in enabled_tools(config))
    return config.agent == "ppo" and config.optimizer == OptimizerConfig() and tools_off


class Reference(NamedTuple):
    """The reference group of one env and schedule: the baseline of the comparisons, and its mean R_1."""

    group: Group
    R_ref: float


def references(
    groups: list[Group], reference: str | None
) -> tuple[dict[tuple[str, str], Reference], list[str]]:
    """The reference per (env, schedule), R_ref its mean R_1; notes on what had none."""
    if reference is not None and reference not in {g.label for g in groups}:
        raise ConfigError(f"no group called {reference!r}; groups: {', '.join(g.label for g in groups)}")
    refs, notes = {}, []
    for group in groups:
        chosen = group.label == reference if reference is not None else _is_baseline(group.config)
        firsts = [r.summary["R"][0] for r in group.runs if r.summary["R"] and r.summary["R"][0] is not None]
        if chosen and firsts and group.environment() not in refs:
            refs[group.environment()] = Reference(group, float(np.mean(firsts)))
    for group in groups:
        if group.environment() not in refs:
            notes.append(
                f"{group.label}: no reference group on the same env and schedule; P uses its own R_1"
            )
    return refs, notes


def _number(value: float | None) -> float:
    """A summary's number, NaN where the summary says None (not measurable)."""
    return math.nan if value is None else value


def _returns(run: Run) -> np.ndarray:
    return np.array([_number(r) for r in run.summary["R"]], dtype=float)


def _p_late(run: Run, R_ref: float | None) -> float:
    """The run's P_late against ``R_ref`` (its own R_1 when None); NaN where it is undefined."""
    R = _returns(run)
    ref = R_ref if R_ref is not None else (R[0] if len(R) else math.nan)
    try:
        return p_late(plasticity_ratios(R, ref, run.summary.get("R_min")))
    except ValueError:  # fewer than 2 phases, or a reference at or below the floor
        return math.nan


def _ratio(run: Run, ratio: Callable[[np.ndarray, float | None], float]) -> float:
    """``ratio`` (:func:`slide` or :func:`late_early`) of the run's R_k, shifted by its env's floor; NaN
    where it has too few phases."""
    try:
        return ratio(_returns(run), run.summary.get("R_min"))
    except ValueError:
        return math.nan


def _last(run: Run, tag: str) -> float:
    points = run.scalars.get(tag)
    return points[-1][1] if points else math.nan


def _interval(estimate: Estimate, seeds: int) -> str:
    """``v [low, high]``; with one value ``v (1 seed: no interval)``; a count when fewer values than the
    table's seeds contributed."""
    if estimate.n == 0:
        return "—"
    if estimate.low is None:
        return f"{estimate.value:.2f} (1 seed: no interval)"
    text = f"{estimate.value:.2f} [{estimate.low:.2f}, {estimate.high:.2f}]"
    return text if estimate.n == seeds else f"{text} (n={estimate.n})"


def _mean(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return f"{np.mean(values):.2f}" if values else "—"


def _curve(group: Group, tag: str, grid: np.ndarray) -> np.ndarray:
    """Each run's ``tag`` on ``grid`` (runs × points; NaN outside a run's range)."""
    rows = []
    for run in group.runs:
        points = run.scalars.get(tag, [])
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        rows.append(np.interp(grid, steps, values, left=math.nan, right=math.nan))
    return np.array(rows)


def _band(curves: np.ndarray, reps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean across seeds (rows) at each point (column) with its 95 % stratified-bootstrap band; no band
    (mean, mean, mean) for one seed."""
    with warnings.catch_warnings():  # grid points past a run's last step are NaN for every seed
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(curves, axis=0)
    if len(curves) < 2:
        return mean, mean, mean
    _, low, high = stratified_bootstrap(curves, lambda scores: np.nanmean(scores, axis=0), reps)
    return mean, low, high


def _plot_bands(axis, x: np.ndarray, rows: np.ndarray, label: str, reps: int, **style) -> None:
    mean, low, high = _band(rows, reps)
    (line,) = axis.plot(x, mean, label=label, **style)
    axis.fill_between(x, low, high, alpha=0.2, color=line.get_color())


def _phase_returns(group: Group) -> np.ndarray:
    """R_k of each run (runs × the group's most phases), NaN-padded."""
    rows = [_returns(run) for run in group.runs]
    table = np.full((len(rows), max(map(len, rows), default=0)), math.nan)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table


def plot(
    groups: list[Group], out: Path, refs: dict[tuple[str, str], Reference], reps: int, suffix: str = ""
) -> list[str]:
    """``tasks.png`` (R_k, the return at the end of task k, against k: one line per group, the mean across
    seeds with its 95 % band, R_ref dashed), ``returns.png`` (return over steps, task switches marked) and
    ``diagnostics.png``, each name with ``suffix`` before its extension; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reps = min(reps, BAND_REPS)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for group in groups:
        table = _phase_returns(group)
        tasks = np.arange(1, table.shape[1] + 1)
        _plot_bands(axis, tasks, table, f"{group.label} (n={len(table)})", reps, marker="o", markersize=3)
    for ref in refs.values():
        axis.axhline(ref.R_ref, color="grey", linewidth=0.8, linestyle="--")
    axis.set(
        xlabel="task k", ylabel="R_k (return at the end of task k)", title="Return at the end of each task"
    )
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"tasks{suffix}.png", dpi=110)
    plt.close(figure)

    end = max(run.config.steps for group in groups for run in group.runs)
    grid = np.linspace(0, end, 200)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for group in groups:
        curves = _curve(group, RETURN_TAG, grid)
        if len(curves):
            _plot_bands(axis, grid, curves, f"{group.label} (n={len(curves)})", reps)
    for start, _, _ in groups[0].runs[0].summary["phases"][1:]:
        axis.axvline(start, color="grey", linewidth=0.6, linestyle=":")
    axis.set(xlabel="environment steps", ylabel="episodic return", title="Return (dotted: task switches)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"returns{suffix}.png", dpi=110)
    plt.close(figure)
    figure, axes = plt.subplots(1, len(DIAGNOSTIC_TAGS), figsize=(11, 4))
    for axis, tag in zip(axes, DIAGNOSTIC_TAGS, strict=True):
        for group in groups:
            curves = _curve(group, tag, grid)
            if len(curves):
                _plot_bands(axis, grid, curves, group.label, reps)
        axis.set(xlabel="environment steps", title=tag)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / f"diagnostics{suffix}.png", dpi=110)
    plt.close(figure)
    return [f"{name}{suffix}.png" for name in ("tasks", "returns", "diagnostics")]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _improvement(group: Group, ref: Reference | None, scores: dict[str, dict[int, float]], reps: int) -> str:
    """P(X > base) of the group's per-seed ``scores`` (higher is better) over the reference group's."""
    if ref is None:
        return "—"
    if ref.group is group:
        return "baseline"
    estimate = probability_of_improvement(scores[group.label], scores[ref.group.label], reps)
    return _interval(estimate, estimate.n) + (f" ({estimate.n} paired seeds)" if estimate.n > 1 else "")


TABLE_HEADER = [
    "| group | seeds | P_late IQM | P_late mean | P(X > base) | R_1 | slide S | late/early | forgetting "
    "| P(forgets less) | dormant (actor) | srank (actor) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def _world_table(
    groups: list[Group],
    p_lates: dict[str, dict[int, float]],
    refs: dict[tuple[str, str], Reference],
    reps: int,
) -> list[str]:
    """The table of one world: a row per group (``p_lates``: each group's P_late by seed)."""
    forgetting = {  # per seed; NaN where no task recurred
        group.label: {run.config.seed: _number(run.summary["forgetting_mean"]) for run in group.runs}
        for group in groups
    }
    less_forgetting = {label: {s: -f for s, f in by_seed.items()} for label, by_seed in forgetting.items()}
    lines = list(TABLE_HEADER)
    for group in groups:
        iqm, mean = iqm_and_mean(list(p_lates[group.label].values()), reps)
        seeds = iqm.n if iqm.n == len(group.runs) else f"{iqm.n} of {len(group.runs)}"
        firsts = [_number(r.summary["R"][0]) if r.summary["R"] else math.nan for r in group.runs]
        ref = refs.get(group.environment())
        lines.append(
            f"| {group.label} | {seeds} | {_interval(iqm, iqm.n)} | {_interval(mean, mean.n)} "
            f"| {_improvement(group, ref, p_lates, reps)} "
            f"| {_interval(iqm_and_mean(firsts, reps)[1], iqm.n)} "
            f"| {_interval(iqm_and_mean([_ratio(r, slide) for r in group.runs], reps)[1], iqm.n)} "
            f"| {_mean([_ratio(r, late_early) for r in group.runs])} "
            f"| {_interval(iqm_and_mean(list(forgetting[group.label].values()), reps)[1], iqm.n)} "
            f"| {_improvement(group, ref, less_forgetting, reps)} "
            f"| {_mean([_last(r, DIAGNOSTIC_TAGS[0]) for r in group.runs])} "
            f"| {_mean([_last(r, DIAGNOSTIC_TAGS[1]) for r in group.runs])} |"
        )
    return lines


WINDOW_HEADER = [
    "| group | seeds | windows × W steps | late P_w IQM | late P_w mean | R_w of the first window "
    "| slide over windows |",
    "|---|---|---|---|---|---|---|",
]


def _windows_table(groups: list[Group], reps: int) -> list[str]:
    """The windowed metrics (``metrics.window``) of the groups whose runs have them: a
    row per group, each run's P_w against its own first window; none where no run has windows."""
    lines = []
    for group in groups:
        windows = [run.summary["windows"] for run in group.runs if run.summary.get("windows")]
        if not windows:
            continue
        late = [_number(w["P_late"]) for w in windows]
        iqm, mean = iqm_and_mean(late, reps)
        shape = sorted({f"{len(w['R'])} × {w['window']:,}" for w in windows})
        firsts = [_number(w["R"][0]) if w["R"] else math.nan for w in windows]
        lines.append(
            f"| {group.label} | {iqm.n} | {', '.join(shape)} | {_interval(iqm, iqm.n)} "
            f"| {_interval(mean, mean.n)} | {_interval(iqm_and_mean(firsts, reps)[1], iqm.n)} "
            f"| {_mean([_number(w['slide']) for w in windows])} |"
        )
    return [*WINDOW_HEADER, *lines] if lines else []


def _suite_section(
    worlds: dict[str, list[Group]],
    p_lates: dict[str, dict[str, dict[int, float]]],
    refs: dict[tuple[str, str], Reference],
    out: Path,
    reps: int,
) -> list[str]:
    """Across worlds: P_late's IQM per world and group, and over every world × seed cell (each world's
    seeds resampled within it), P(X > base) averaged over worlds, and ``profiles.png``, rliable's
    performance profiles of P_late; for the groups every world has."""
    first, *others = worlds.values()
    labels = [g.label for g in first if all(g.label in {o.label for o in other} for other in others)]
    bases = {ref.group.label for ref in refs.values()}  # one reference per world, the same group in each
    baseline = bases.pop() if len(bases) == 1 and len(refs) == len(worlds) else None
    lines = [
        "",
        "## Across worlds",
        "",
        "P_late IQM [95 % CI] per world, and over every world × seed (IQM of all cells, each world's seeds "
        "resampled within it); P(X > base) over all worlds: the mean over worlds of each world's "
        "probability of improvement, on the seeds every world ran.",
        "",
        "| group | " + " | ".join(worlds) + " | all worlds: P_late IQM | P(X > base), all worlds |",
        "|---" * (len(worlds) + 3) + "|",
    ]
    scores = {}
    for label in labels:
        by_world = [p_lates[world][label] for world in worlds]
        cells = [_interval(iqm_and_mean(list(seeds.values()), reps)[0], len(seeds)) for seeds in by_world]
        shared = sorted(set.intersection(*(set(seeds) for seeds in by_world)))
        scores[label] = np.array([[seeds[s] for seeds in by_world] for s in shared], dtype=float)
        iqm, _ = iqm_and_mean(scores[label], reps)
        if baseline is None:
            improvement = "—"
        elif label == baseline:
            improvement = "baseline"
        else:
            base = [p_lates[world][baseline] for world in worlds]
            estimate = probability_of_improvement(by_world, base, reps)
            improvement = _interval(estimate, estimate.n)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_interval(iqm, iqm.n)} | {improvement} |")
    lines += ["", f"![profiles.png]({_plot_profiles(scores, out, reps)})"]
    return lines


def _plot_profiles(scores: dict[str, np.ndarray], out: Path, reps: int) -> str:
    """``profiles.png``: for each τ, the fraction of runs (world × seed) whose P_late exceeds τ, with its
    95 % stratified-bootstrap band (rliable's performance profiles, Agarwal et al. 2021)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library, plot_utils

    complete = {label: matrix for label, matrix in scores.items() if len(matrix)}
    taus = np.linspace(0.0, 1.3, 66)
    state = np.random.get_state()
    np.random.seed(0)
    try:
        profiles, intervals = library.create_performance_profile(complete, taus, reps=min(reps, BAND_REPS))
    finally:
        np.random.set_state(state)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    plot_utils.plot_performance_profiles(
        profiles,
        taus,
        performance_profile_cis=intervals,
        ax=axis,
        xlabel="P_late (τ)",
        ylabel="fraction of runs with P_late > τ",
    )
    for tau, name in (
        (COLLAPSED_AT, f"collapsed ≤ {COLLAPSED_AT}"),
        (SUSTAINED_AT, f"sustained ≥ {SUSTAINED_AT}"),
    ):
        axis.axvline(tau, color="grey", linewidth=0.8, linestyle="--")
        axis.text(tau, 1.02, name, fontsize=8, ha="center")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "profiles.png", dpi=110)
    plt.close(figure)
    return "profiles.png"


def verdict(value: float) -> str:
    """What a P_late says: collapsed at or below :data:`COLLAPSED_AT`, sustained at or
    above :data:`SUSTAINED_AT`, in between otherwise."""
    if math.isnan(value):
        return "no P_late (too few tasks, or no reference)"
    if value <= COLLAPSED_AT:
        return f"collapsed (P_late ≤ {COLLAPSED_AT})"
    if value >= SUSTAINED_AT:
        return f"sustained (P_late ≥ {SUSTAINED_AT})"
    return f"in between ({COLLAPSED_AT} < P_late < {SUSTAINED_AT})"


def verdicts(p_lates_by_world: dict[str, dict[str, dict[int, float]]]) -> list[str]:
    """A line per group (per world in a suite): its P_late, the IQM across seeds, and :func:`verdict`."""
    lines = []
    for world, groups in p_lates_by_world.items():
        prefix = f"{world}: " if len(p_lates_by_world) > 1 else ""
        for label, by_seed in groups.items():
            iqm, _ = iqm_and_mean(list(by_seed.values()), reps=1_000)
            seeds = "" if iqm.n == 1 else f" (IQM of {iqm.n} seeds)"
            value = "—" if math.isnan(iqm.value) else f"{iqm.value:.2f}"
            lines.append(f"{prefix}{label}: P_late {value}{seeds}: {verdict(iqm.value)}")
    return lines


class WrittenReport(NamedTuple):
    """What :func:`write_report` wrote (``path``: the report.md), the runs it skipped, one note each, its
    tables (markdown lines: in a suite, a heading per section), its notes (each once) and a
    :func:`verdicts` line per group."""

    path: Path
    skipped: list[str]
    table: list[str]
    notes: list[str]
    verdicts: tuple[str, ...] = ()


def write_report(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    reference: str | None = None,
    reps: int = 10_000,
) -> WrittenReport:
    """Write ``report.md`` and the figures for the runs under ``paths``; returns the report's path and a
    note for each run it skipped.
    ``reps``: bootstrap resamples of each interval (a figure's bands use at most 1 000)."""
    if reps < 1:
        raise ConfigError(f"the number of bootstrap resamples must be a positive integer, got {reps}")
    runs, skipped = find_runs(paths)
    if not runs:
        where = ", ".join(str(p) for p in paths)
        detail = f" ({len(skipped)} skipped: {skipped[0]} …)" if skipped else ""
        raise ConfigError(
            f"no finished runs (directories with config.yaml and summary.json) under {where}{detail}"
        )
    groups = group_runs(runs)
    refs, notes = references(groups, reference)
    notes += dict.fromkeys(note for run in runs for note in run.summary.get("notes", []))
    worlds = by_world(groups)
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    p_lates_by_world = {
        world: {
            group.label: {
                run.config.seed: _p_late(run, ref.R_ref if (ref := refs.get(group.environment())) else None)
                for run in group.runs
            }
            for group in members
        }
        for world, members in worlds.items()
    }
    lines = [
        "# nested-ac report",
        "",
        f"{_count(len(runs), 'run')} in {_count(len(groups), 'group')}"
        + (f" in {len(worlds)} worlds" if len(worlds) > 1 else "")
        + ". P_late (primary): mean R_k/R_ref over the last half of the tasks (collapsed ≤ "
        f"{COLLAPSED_AT}, sustained ≥ {SUSTAINED_AT}), its interquartile mean (IQM) and mean across seeds; "
        "P(X > base): probability that the group's P_late beats the baseline's (the reference group), on "
        "the seeds both ran; seeds: how many seeds' P_late contributed. Intervals: 95 % stratified "
        f"bootstrap ({reps} resamples; rliable, Agarwal et al. 2021); one seed has none. Secondary: R_1, the "
        "return at the end of the first task; slide S, late ÷ early tasks after the first switch (collapse "
        "≤ 0.75, sustained ≥ 0.95), and late/early, both over returns above the env's floor R_min; "
        "forgetting (recurring tasks): per run, the mean over its returns to a task of R at the end of the "
        "previous visit minus the return early in the new one; its mean across seeds, and P(forgets less), "
        "the probability that the group forgets less than the baseline, paired by seed like P(X > base).",
    ]
    if len(worlds) > 1:
        lines += _suite_section(worlds, p_lates_by_world, refs, out, reps)
    for world, members in worlds.items():
        own_refs = {key: ref for key, ref in refs.items() if key == members[0].environment()}
        suffix = "" if len(worlds) == 1 else "-" + re.sub(r"[^\w.-]+", "_", world)
        if len(worlds) > 1:
            lines += ["", f"## {world}"]
        lines += ["", *_world_table(members, p_lates_by_world[world], own_refs, reps), ""]
        windowed = _windows_table(members, reps)
        if windowed:
            lines += [
                "Windows (a world that drifts without tasks, `metrics.window`): R_w the mean return of the "
                "episodes that end in window w, P_w = (R_w − R_min)/(R_1 − R_min) against the run's first "
                "window; late P_w: the mean over the last half of the windows; slide as above, over windows.",
                "",
                *windowed,
                "",
            ]
        lines += [*(f"![{name}]({name})" for name in plot(members, out, own_refs, reps, suffix)), ""]
    if refs:
        lines.append(
            "R_ref (baseline): "
            + "; ".join(f"{env} {sched}: {r.R_ref:.1f} ({r.group.label})" for (env, sched), r in refs.items())
        )
    lines += [f"- note: {note}" for note in notes] + [f"- skipped: {line}" for line in skipped]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    table = [line for line in lines if line.startswith(("|", "## "))]
    return WrittenReport(out / "report.md", skipped, table, notes, tuple(verdicts(p_lates_by_world)))
