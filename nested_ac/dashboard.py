"""TensorBoard as the dashboard: a custom-scalars layout, HParams sessions and the report's figures.

Three views, each written with TensorBoard's own summary APIs (torch's ``SummaryWriter.add_custom_scalars``
and ``add_image``, ``tensorboard.plugins.hparams.summary_v2``) into the event files already there:

- **Custom scalars** (:func:`layout`): every run writes one layout when it starts, in three categories:
  ``continual`` (episode return with a min–max band and the task switches, R_k / P_k per task, the
  run-level metrics), ``plasticity`` (dormant fraction, srank, weight size per network, policy entropy,
  gradient norm) and ``interventions`` (UPGD utility, units replaced by CBP / reset by ReDo, the nested
  critics' gaps and churn; empty for a run without any); a chart appears only where the run logs its tags.
- **HParams** (:func:`hparams`): every run is one session: its hyperparameters that differ from the
  defaults (with ``agent``, ``optimizer.name`` and ``seed``; in a sweep, every key that any variant
  changes), in the session group of its variant; when it finishes, its metrics (:data:`METRICS`) are
  scalars at its last step. A sweep writes the experiment (those keys and metrics) into its own event
  file, so the HParams table and parallel-coordinates view compare its variants, one row per variant.
- **Images**: a sweep's report figures go into the sweep's own event file, a lone run's into its own
  (:func:`add_report_images`).

A resumed run opens a new event file in the same directory; what a run writes once (layout, session start,
experiment) is written only if no event file of the directory holds it yet (:func:`written_tags`).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from tensorboard.plugins.custom_scalar import metadata as custom_scalars_metadata
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter

from nested_ac import (
    build,  # noqa: F401  (registers the built-in tools)
    rundir,
)
from nested_ac.config import RunConfig
from nested_ac.envs.schedules import make_schedule
from nested_ac.registry import TOOLS
from nested_ac.report import COLLAPSED_AT, SUSTAINED_AT

LAYOUT_TAG = custom_scalars_metadata.CONFIG_SUMMARY_TAG
# Constant scalars beside P_k, one point at each task's end: the lines a P chart is read against.
THRESHOLD_TAGS = ("continual/P_collapsed_at", "continual/P_sustained_at")
THRESHOLDS = dict(zip(THRESHOLD_TAGS, (COLLAPSED_AT, SUSTAINED_AT), strict=True))
SESSION_TAG = hparams_metadata.SESSION_START_INFO_TAG
EXPERIMENT_TAG = hparams_metadata.EXPERIMENT_TAG

# The run-level metrics in the HParams table: scalar tag → column title (summary.json key in brackets).
METRICS = {
    "continual/R_1": "R_1",  # R[0]: return at the end of the first task
    "continual/P_late": "P_late",
    "continual/slide": "slide",
    "continual/R_final": "final return",  # R[-1]: return at the end of the last task
}
ALWAYS_RECORDED = ("agent", "optimizer.name", "seed")
NOT_HYPERPARAMETERS = ("name", "run_dir", "progress_bar", "report")  # where a run goes, not what it is
IMAGE_LINK = re.compile(r"^!\[[^\]]*\]\(([^)]+\.png)\)$", re.MULTILINE)

Layout = dict[str, dict[str, list[Any]]]


def _multiline(*patterns: str) -> list[Any]:
    return ["Multiline", [f"^{pattern}$" for pattern in patterns]]


def layout(agent: BaseAlgorithm, switching: bool, windowed: bool = False) -> Layout:
    """The custom-scalars layout of a run of ``agent`` (``switching``: its env changes task), in torch's
    ``add_custom_scalars`` format: category → chart title → ``["Multiline", tag regexes]`` or
    ``["Margin", [value, lower, upper]]`` (``windowed``: the run has windows, ``metrics.window``). Each
    chart holds tags of one scale: the return, the task index, R_k, P_k with the collapse and sustain
    lines, the ratios, R_w, P_w. Two categories, neither ever empty:
    TensorBoard shows an empty one, and merges the layouts of the runs it shows into the first run's (by
    name), dropping charts of a category that run lacks. Only charts whose tags the run writes; a
    plasticity tool's charts are its registration's (:class:`~nested_ac.registry.ToolSpec` ``charts``),
    the diagnostics' first, then the gradient norm, then the interventions'."""
    tools = getattr(agent, "tools", [])
    used = [entry.target for entry in TOOLS if any(isinstance(tool, entry.target.tool) for tool in tools)]

    def charts(category: str) -> dict[str, list[Any]]:
        return {
            title: _multiline(tag)
            for spec in used
            if spec.category == category
            for title, tag in spec.charts.items()
        }

    continual: dict[str, list[Any]] = {}
    if switching:
        continual[
            f"P_k at the end of each task, and P_late: collapsed at or below {COLLAPSED_AT}, "
            f"sustained at or above {SUSTAINED_AT}"
        ] = _multiline("continual/P", "continual/P_late", *THRESHOLD_TAGS)
    continual["R_k: return at the end of each task; R_1 and the final return"] = _multiline(
        "continual/R", "continual/R_1", "continual/R_final"
    )
    if switching:
        continual["task: index, and the new task at each switch"] = _multiline("task/index", "task/switch")
        continual["run-level ratios: slide S (collapse ≤ 0.75, sustained ≥ 0.95), late/early"] = _multiline(
            "continual/slide", "continual/late_early"
        )
    if windowed:
        continual[
            f"windows: P_w against the first window, and their late mean (collapsed ≤ {COLLAPSED_AT}, "
            f"sustained ≥ {SUSTAINED_AT})"
        ] = _multiline("windows/P", "windows/P_late")
        continual["windows: R_w, the return of the episodes that end in each window"] = _multiline(
            "windows/R"
        )
    continual["episode return (band: min–max over the rollout's episodes)"] = [
        "Margin",
        ["episode/return", "episode/return_min", "episode/return_max"],
    ]
    plasticity = charts("plasticity")
    plasticity["gradient norm before clipping"] = _multiline("train/grad_norm")
    plasticity |= charts("interventions")
    if getattr(agent.policy, "levels", 1) > 1:
        plasticity["nested critics: gap to the next critic"] = _multiline(r"nested/critic_\d+/gap")
        plasticity["nested critics: churn on a fixed probe"] = _multiline(r"nested/critic_\d+/churn")
    return {"continual": continual, "plasticity and interventions": plasticity}


def _flat(config: RunConfig) -> dict[str, Any]:
    """``config`` as dotted keys; lists and ``env.kwargs`` stay whole values."""
    flat: dict[str, Any] = {}

    def walk(mapping: dict[str, Any], prefix: str) -> None:
        for key, value in mapping.items():
            if isinstance(value, dict) and key != "kwargs":
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config.to_dict(), "")
    return flat


def _with_env_defaults(config: RunConfig) -> RunConfig:
    """A copy of ``config`` with the schedule defaults of its env filled in, as training fills them."""
    filled = copy.deepcopy(config)
    make_schedule(filled)
    return filled


def changed_keys(config: RunConfig) -> list[str]:
    """The dotted keys where ``config`` differs from the defaults (its env's own schedule counts as a
    default), plus :data:`ALWAYS_RECORDED`; never where the run goes (:data:`NOT_HYPERPARAMETERS`)."""
    defaults = RunConfig()
    defaults.env.id = config.env.id
    ours, theirs = _flat(_with_env_defaults(config)), _flat(_with_env_defaults(defaults))
    if config.env.id != RunConfig().env.id:
        theirs["env.id"] = RunConfig().env.id
    changed = {key for key, value in ours.items() if value != theirs.get(key)} | set(ALWAYS_RECORDED)
    return sorted(changed - set(NOT_HYPERPARAMETERS))


def _value(value: Any) -> bool | float | str:
    if isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        return float(value)
    return json.dumps(value)  # lists, None, env.kwargs


def hparams(config: RunConfig, keys: Sequence[str] = ()) -> dict[str, bool | float | str]:
    """The HParams of a run: its :func:`changed_keys` and ``keys``, valued as in ``config``."""
    flat = _flat(_with_env_defaults(config))
    return {key: _value(flat[key]) for key in sorted({*changed_keys(config), *keys}) if key in flat}


def session_group(config: RunConfig) -> str:
    """A sweep run's variant (its parent directory); a lone run's own name."""
    parent = Path(config.run_dir).name
    return parent if parent not in ("runs", "") else str(config.name)


def written(directory: Path) -> set[tuple[str, int]]:
    """``(tag, step)`` of each plugin summary (layout, HParams, image) already in ``directory``'s event
    files; a damaged file counts up to its damage."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found: set[tuple[str, int]] = set()
    for event_file in sorted(directory.glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(event_file)).Load():
                found.update(
                    (value.tag, event.step)
                    for value in event.summary.value
                    if value.metadata.plugin_data.plugin_name
                )
        except Exception:  # noqa: BLE001, S112  (a truncated record: what came before it stands)
            continue
    return found


def written_tags(directory: Path) -> set[str]:
    """The tags of :func:`written`."""
    return {tag for tag, _ in written(directory)}


def start_run(
    writer: SummaryWriter,
    run_dir: Path,
    config: RunConfig,
    agent: BaseAlgorithm,
    switching: bool,
    keys: Sequence[str] = (),
    windowed: bool = False,
) -> None:
    """Write the run's layout and HParams session start, unless an earlier process of it did; flushed at
    once (they are not points past a checkpoint, so :class:`~nested_ac.events.DeferredOutput` need not
    hold them)."""
    present = written_tags(run_dir)
    if LAYOUT_TAG not in present:
        writer.add_custom_scalars(layout(agent, switching, windowed))
    if SESSION_TAG not in present:
        summary = hp.hparams_pb(hparams(config, keys), trial_id=session_group(config))
        writer.file_writer.add_summary(summary)
    writer.flush()


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The run-level scalars a finished run writes at its last step: :data:`METRICS` and the other
    run-level numbers of ``summary.json`` (late/early, mean forgetting, the windows' late mean and slide);
    a metric it has too few tasks for
    is left out."""
    R = summary["R"]
    values = {
        "continual/R_1": R[0] if R else None,
        "continual/P_late": summary["P_late"],
        "continual/slide": summary["slide"],
        "continual/R_final": R[-1] if R else None,
        "continual/late_early": summary["late_early"],
        "continual/forgetting_mean": summary["forgetting_mean"],
    }
    windows = summary.get("windows")
    if windows:
        values |= {"windows/P_late": windows["P_late"], "windows/slide": windows["slide"]}
    return {tag: value for tag, value in values.items() if value is not None and not math.isnan(value)}


def _domain(values: list[bool | float | str]) -> hp.Discrete | None:
    kinds = {type(value) for value in values}
    return hp.Discrete(sorted(set(values))) if len(kinds) == 1 else None


def write_experiment(sweep_dir: Path, configs: Sequence[RunConfig], keys: Sequence[str]) -> None:
    """The sweep's HParams experiment (``keys`` with the values its runs take, and :data:`METRICS`) in
    ``sweep_dir``'s own event file, unless one is there already."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if EXPERIMENT_TAG in written_tags(sweep_dir):
        return
    values = [hparams(config, keys) for config in configs]
    columns = [hp.HParam(key, _domain([v[key] for v in values if key in v])) for key in keys]
    metrics = [hp.Metric(tag, display_name=title) for tag, title in METRICS.items()]
    with SummaryWriter(str(sweep_dir)) as writer:
        writer.file_writer.add_summary(hp.hparams_config_pb(columns, metrics))


def add_report_images(directory: Path, report: Path) -> list[str]:
    """Put every figure ``report`` (a report.md) links to into ``directory``'s own event file (a sweep's,
    or a lone run's) as an image ``report/<name>``, at the step = the number of finished runs under
    ``directory`` (a rerun of a finished sweep writes nothing again); returns the tags written."""
    import matplotlib.pyplot as plt

    step = sum(1 for _ in directory.rglob(rundir.SUMMARY_FILE))
    present = written(directory)
    figures = [report.parent / name for name in IMAGE_LINK.findall(report.read_text())]
    todo = {
        f"report/{path.stem}": path
        for path in figures
        if path.is_file() and (f"report/{path.stem}", step) not in present
    }
    if todo:
        with SummaryWriter(str(directory)) as writer:
            for tag, path in todo.items():
                writer.add_image(tag, plt.imread(path)[..., :3], step, dataformats="HWC")
    return list(todo)
