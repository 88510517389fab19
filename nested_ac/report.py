"""``nested-ac report``: tables and plots of many runs, grouped by configuration, with bootstrap CIs.

A run is a directory with ``config.yaml``; its continual metrics come from ``summary.json`` (written when
the run finishes) and its curves from its TensorBoard event files (several after a resume). Runs whose
configurations differ only in seed, name and directory form one group, labelled by the directory that
holds them (a sweep's variant) or, for lone runs, by their name. One reference R_ref for every group of
the same environment and schedule: the mean over seeds of the reference group's R_1 (``--reference``;
default: the group with agent ppo, optimizer adam and no plasticity tool), so a variant that learns slowly
is not flattered; groups without a matching reference keep their own R_1 and the report says so.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nested_ac.config import OptimizerConfig, RunConfig, resolve_config
from nested_ac.continual import bootstrap_ci, p_late, plasticity_ratios, slide
from nested_ac.errors import ConfigError

RETURN_TAG = "episode/return"
DIAGNOSTIC_TAGS = ("plasticity/actor/dormant", "plasticity/actor/srank")
IDENTITY_KEYS = ("seed", "name", "run_dir", "progress_bar")


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
    directories = sorted({p.parent for path in paths for p in Path(path).rglob("config.yaml")})
    for directory in directories:
        try:
            config = resolve_config(directory / "config.yaml")
        except ConfigError as error:
            skipped.append(f"{directory}: unreadable config.yaml ({error})")
            continue
        if not (directory / "summary.json").is_file():
            skipped.append(f"{directory}: no summary.json (the run has not finished)")
            continue
        try:
            scalars = read_scalars(directory)
        except Exception as error:  # noqa: BLE001  (a truncated or corrupt event file skips the run)
            skipped.append(f"{directory}: unreadable TensorBoard events ({type(error).__name__}: {error})")
            continue
        for event_file in sorted(directory.glob("events.out.tfevents.*")):
            if not intact(event_file):
                skipped.append(f"{event_file}: truncated or corrupt; its curves are read up to the damage")
        summary = json.loads((directory / "summary.json").read_text())
        runs.append(Run(directory, config, summary, scalars))
    return runs, skipped


def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[str, Group] = {}
    for run in runs:
        identity = {k: v for k, v in run.config.to_dict().items() if k not in IDENTITY_KEYS}
        key = json.dumps(identity, sort_keys=True, default=str)
        if key not in groups:
            parent = Path(run.config.run_dir).name
            label = parent if parent not in ("runs", "") else run.config.name or run.path.name
            taken = {g.label for g in groups.values()}
            suffix = 2
            while label in taken:
                label, suffix = f"{label.rsplit('#', 1)[0]}#{suffix}", suffix + 1
            groups[key] = Group(label)
        groups[key].runs.append(run)
    return list(groups.values())


def _is_baseline(config: RunConfig) -> bool:
    """PPO with Adam at its default settings, no plasticity tool: the default reference group."""
    tools_off = not (config.cbp.enabled or config.redo.enabled or config.l2_init.coef)
    return (
        config.agent == "ppo"
        and config.optimizer == OptimizerConfig()
        and tools_off
        and config.shrink_perturb.mode == "off"
    )


def references(groups: list[Group], reference: str | None) -> tuple[dict[tuple[str, str], float], list[str]]:
    """R_ref per (env, schedule): the mean R_1 of the reference group there; notes on what had none."""
    if reference is not None and reference not in {g.label for g in groups}:
        raise ConfigError(f"no group called {reference!r}; groups: {', '.join(g.label for g in groups)}")
    refs, notes = {}, []
    for group in groups:
        chosen = group.label == reference if reference is not None else _is_baseline(group.config)
        firsts = [r.summary["R"][0] for r in group.runs if r.summary["R"] and r.summary["R"][0] is not None]
        if chosen and firsts and group.environment() not in refs:
            refs[group.environment()] = float(np.mean(firsts))
    for group in groups:
        if group.environment() not in refs:
            notes.append(
                f"{group.label}: no reference group on the same env and schedule; P uses its own R_1"
            )
    return refs, notes


def _returns(run: Run) -> np.ndarray:
    return np.array([math.nan if r is None else r for r in run.summary["R"]], dtype=float)


def _p_late(run: Run, R_ref: float | None) -> float:
    """The run's P_late against ``R_ref`` (its own R_1 when None); NaN where it is undefined."""
    R = _returns(run)
    ref = R_ref if R_ref is not None else (R[0] if len(R) else math.nan)
    try:
        return p_late(plasticity_ratios(R, ref, run.summary.get("R_min")))
    except ValueError:  # fewer than 2 phases, or a reference at or below the floor
        return math.nan


def _slide(run: Run) -> float:
    R = _returns(run)
    return slide(R) if len(R) >= 4 else math.nan


def _last(run: Run, tag: str) -> float:
    points = run.scalars.get(tag)
    return points[-1][1] if points else math.nan


def _ci(values: list[float]) -> str:
    mean, low, high = bootstrap_ci(values)
    return "—" if math.isnan(mean) else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


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


def _band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean across seeds with a 95 % bootstrap band (1 000 resamples per point)."""
    with warnings.catch_warnings():  # grid points past a run's last step are NaN for every seed
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(curves, axis=0)
        if len(curves) < 2:
            return mean, mean, mean
        picks = np.random.default_rng(0).integers(0, len(curves), size=(1000, len(curves)))
        resampled = np.nanmean(curves[picks], axis=1)
        return mean, np.nanquantile(resampled, 0.025, axis=0), np.nanquantile(resampled, 0.975, axis=0)


def plot(groups: list[Group], out: Path) -> list[str]:
    """``returns.png`` (return over steps, task switches marked, CI band across seeds) and
    ``diagnostics.png``; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max(run.config.steps for group in groups for run in group.runs)
    grid = np.linspace(0, end, 200)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for group in groups:
        curves = _curve(group, RETURN_TAG, grid)
        if len(curves):
            mean, low, high = _band(curves)
            axis.plot(grid, mean, label=f"{group.label} (n={len(curves)})")
            axis.fill_between(grid, low, high, alpha=0.2)
    for start, _, _ in groups[0].runs[0].summary["phases"][1:]:
        axis.axvline(start, color="grey", linewidth=0.6, linestyle=":")
    axis.set(xlabel="environment steps", ylabel="episodic return", title="Return (dotted: task switches)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "returns.png", dpi=110)
    plt.close(figure)
    figure, axes = plt.subplots(1, len(DIAGNOSTIC_TAGS), figsize=(11, 4))
    for axis, tag in zip(axes, DIAGNOSTIC_TAGS, strict=True):
        for group in groups:
            curves = _curve(group, tag, grid)
            if len(curves):
                mean, low, high = _band(curves)
                axis.plot(grid, mean, label=group.label)
                axis.fill_between(grid, low, high, alpha=0.2)
        axis.set(xlabel="environment steps", title=tag)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "diagnostics.png", dpi=110)
    plt.close(figure)
    return ["returns.png", "diagnostics.png"]


def write_report(
    paths: Sequence[str | Path], out: str | Path | None = None, reference: str | None = None
) -> Path:
    """Write ``report.md`` and the plots for the runs under ``paths``; returns the report's path."""
    runs, skipped = find_runs(paths)
    if not runs:
        where = ", ".join(str(p) for p in paths)
        detail = f" ({len(skipped)} skipped: {skipped[0]} …)" if skipped else ""
        raise ConfigError(
            f"no finished runs (directories with config.yaml and summary.json) under {where}{detail}"
        )
    groups = group_runs(runs)
    refs, notes = references(groups, reference)
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# nested-ac report",
        "",
        f"{len(runs)} runs in {len(groups)} groups. R_1: return at the end of the first task; P_late: mean "
        "R_k/R_ref over the last half of the tasks; slide S: late ÷ early tasks after the first switch "
        "(collapse ≤ 0.75, sustained ≥ 0.95); mean with 95 % bootstrap CI across seeds.",
        "",
        "| group | seeds | R_1 | P_late | slide S | late/early | forgetting | dormant (actor) "
        "| srank (actor) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        ref = refs.get(group.environment())
        firsts = [r.summary["R"][0] if r.summary["R"] else None for r in group.runs]
        lines.append(
            f"| {group.label} | {len(group.runs)} "
            f"| {_ci([math.nan if v is None else v for v in firsts])} "
            f"| {_ci([_p_late(r, ref) for r in group.runs])} "
            f"| {_ci([_slide(r) for r in group.runs])} "
            f"| {_mean([r.summary['late_early'] for r in group.runs])} "
            f"| {_mean([r.summary['forgetting_mean'] for r in group.runs])} "
            f"| {_mean([_last(r, DIAGNOSTIC_TAGS[0]) for r in group.runs])} "
            f"| {_mean([_last(r, DIAGNOSTIC_TAGS[1]) for r in group.runs])} |"
        )
    lines += ["", *(f"![{name}]({name})" for name in plot(groups, out)), ""]
    if refs:
        lines.append(
            "R_ref: " + "; ".join(f"{env} {sched}: {value:.1f}" for (env, sched), value in refs.items())
        )
    lines += [f"- note: {note}" for note in notes] + [f"- skipped: {line}" for line in skipped]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
