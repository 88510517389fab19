"""The training entry point: builds the environment and the agent from a RunConfig and trains it.

A run writes ``<run_dir>/<name>/``: ``config.yaml`` (the resolved configuration), ``versions.json`` (the
library versions it ran with: the same seed gives the same run only under the same versions), TensorBoard
event files, ``checkpoints/`` and ``model.zip``; :func:`resume` continues an unfinished one. An existing run
directory is never reused: the new one gets a suffix ``_1``, ``_2``... While a process trains a run it holds
the directory's lock (:mod:`nested_ac.rundir`): a second writer is refused, naming the holder.
"""

from __future__ import annotations

import contextlib
import copy
import platform
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecEnv

from nested_ac import (
    checkpoint,
    continual,
    dashboard,
    envs,
    rundir,
)
from nested_ac.build import build_agent
from nested_ac.callbacks import AnnouncedTasks, EpisodeStats, ProgressBar, TaskClock, Throughput
from nested_ac.checkpoint import Checkpointer, CheckpointStore, restore
from nested_ac.config import RunConfig, resolve_config
from nested_ac.envs.registry import registration, takes_task_seed
from nested_ac.envs.schedules import (
    TaskSchedule,
    announces_tasks,
    check_kind,
    check_schedule_fits,
    make_schedule,
)
from nested_ac.errors import ConfigError
from nested_ac.events import DeferredOutput, rewind_events
from nested_ac.faults import EnvFaultCheck, NumericalFault
from nested_ac.interrupts import InterruptGuard, TrainingInterrupted
from nested_ac.registry import AGENTS, OPTIMIZERS
from nested_ac.rundir import DiskFull, hold, replace_atomically, writing


@dataclass
class RunResult:
    """Where a finished run lives and what it saw; ``steps``: the steps it trained, at least
    ``config.steps`` (PPO trains whole rollouts, so the last one may run past it); ``summary``: its
    continual metrics, as in ``summary.json``."""

    config: RunConfig
    run_dir: Path
    episodes: list[tuple[int, float, int]]
    switches: list[tuple[int, int]]
    seconds: float
    steps: int
    summary: dict[str, Any]


def check_device(device: str) -> None:
    """A ConfigError unless ``device`` names a torch device this machine has: SB3 would take ``cuda``
    without a CUDA device as the CPU without a word."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"device must be a torch device such as cpu, cuda or cuda:0, got {device!r}"
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r}: torch {torch.__version__} finds no CUDA device on this machine (a CPU build "
            "of torch, or no GPU); use --set device=cpu, or a CUDA build of torch on a GPU machine "
            "(TORCH_SPEC, docs/index.md#quick-start)"
        )
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 … cuda:{torch.cuda.device_count() - 1}"
        )
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"device {device!r}: torch finds no MPS device on this machine; use --set device=cpu"
        )


def validate(config: RunConfig) -> gym.envs.registration.EnvSpec:
    """Every name in ``config`` exists (agent, optimizer, env, schedule) and its device is here; returns
    the env's spec."""
    check_device(config.device)
    AGENTS.get(config.agent)
    OPTIMIZERS.get(config.optimizer.name)
    check_kind(config.env.schedule.kind)
    return envs.resolve_env_id(config.env.id)


def make_env(config: RunConfig) -> VecEnv:
    """``n_envs`` copies of the env, seeded from the run seed; an env whose entry point takes ``task_seed``
    (every nested-ac env, a plug-in's that has the parameter) gets ``task_seed`` = seed.

    The fast path: where the env has a same-step numpy-vectorized implementation and ``env.vectorized``
    is on, one vector env behind :class:`nested_ac.envs.GymnasiumVecEnv`; otherwise SB3's ``DummyVecEnv``.
    Per-copy switching at episode boundaries needs separate copies, so it always takes the ``DummyVecEnv``.
    """
    kwargs = dict(config.env.kwargs)
    if takes_task_seed(config.env.id):
        kwargs.setdefault("task_seed", config.seed)
    try:
        if config.env.vectorized and not config.env.schedule.at_episode_boundary:
            spec = envs.resolve_env_id(config.env.id)
            vec_env = envs.native_vector(spec.id, config.env.n_envs, kwargs)
            if vec_env is not None:
                vec_env.seed(config.seed)
                return vec_env
        return make_vec_env(config.env.id, n_envs=config.env.n_envs, seed=config.seed, env_kwargs=kwargs)
    except TypeError as error:
        raise ConfigError(f"env {config.env.id!r} rejected env.kwargs {config.env.kwargs}: {error}") from None


def return_floor(config: RunConfig, env: VecEnv) -> float | None:
    """R_min, the lowest return an episode can have: ``env.return_floor`` if set, else the env's own (its
    ``return_floor`` attribute, else what :func:`~nested_ac.envs.register_nonstationary` recorded); None
    where none is known."""
    if config.env.return_floor is not None:
        return config.env.return_floor
    if env.has_attr("return_floor") and env.get_attr("return_floor")[0] is not None:
        return float(env.get_attr("return_floor")[0])
    info = registration(config.env.id)
    return info.return_floor if info else None


def floor_note(env_id: str, episodes: Sequence[tuple[int, float, int]], floor: float | None) -> str | None:
    """What to say when ``env_id`` gave negative episode returns (``episodes``: (step, return, length))
    and no floor is known: P_k and the ratios then measure the return above 0 (none where R_1 ≤ 0)."""
    if floor is not None or all(episode_return >= 0 for _, episode_return, _ in episodes):
        return None
    return (
        f"env {env_id} gave negative episode returns and has no known return floor, so P_k, P_late, the "
        "slide and late/early measure the return above 0 and are missing where R_1 <= 0; give the lowest "
        "return an episode can have: --set env.return_floor=VALUE, or a return_floor attribute of the env "
        "(docs/environments.md)"
    )


LIBRARIES = ("nested-ac", "torch", "numpy", "gymnasium", "stable-baselines3")


def cpu_description() -> str:
    """The CPU's model and the instruction set torch's kernels use on it (e.g. ``AVX512``): torch's CPU
    kernels round differently on another instruction set, so a long run on another CPU parts from this one."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


def library_versions() -> dict[str, str]:
    """Python's and the numerical libraries' versions and the CPU: what a run's numbers depend on besides
    its config."""
    versions = {name: metadata.version(name) for name in LIBRARIES}
    return {"python": platform.python_version(), **versions, "cpu": cpu_description()}


def _warn_if_versions_changed(run_dir: Path) -> None:
    saved, now = rundir.read_json(run_dir, rundir.VERSIONS_FILE), library_versions()
    if saved is None:
        return
    changed = [f"{name} {saved[name]} -> {now.get(name)}" for name in saved if saved[name] != now.get(name)]
    if changed:
        warnings.warn(
            f"resuming {run_dir} under other library versions than it started with ({', '.join(changed)}): "
            "the rest of the run may differ from an uninterrupted one",
            stacklevel=3,
        )


@contextlib.contextmanager
def _training(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` while the block trains it; a full disk's error names the last checkpoint."""
    with hold(run_dir):
        try:
            yield
        except DiskFull as full:
            store = CheckpointStore(run_dir / rundir.CHECKPOINT_DIR, keep=1)
            full.run_dir, full.last_checkpoint = run_dir, (store.latest() if store.paths() else None)
            raise


def train(config: RunConfig, hparam_keys: Sequence[str] = (), into: Path | None = None) -> RunResult:
    """Train one agent as ``config`` says; bad input raises ConfigError before anything is written.

    ``config`` is not modified: the resolved copy (defaults filled in, final name) is ``result.config``.
    ``hparam_keys``: config keys its HParams session records even at their defaults (a sweep's shared ones).
    ``into``: train in this existing, empty directory (a sweep's run, held by the caller) instead of a new
    one under ``config.run_dir``. Raises :class:`~nested_ac.interrupts.TrainingInterrupted` after a
    SIGINT/SIGTERM/SIGHUP (a checkpoint is written), :class:`~nested_ac.faults.NumericalFault` on a NaN/inf
    and :class:`~nested_ac.rundir.DiskFull` when the disk is full (the last checkpoint is kept).
    """
    validate(config)
    config = copy.deepcopy(config)
    schedule = make_schedule(config)
    torch.set_num_threads(config.torch_threads)
    env = make_env(config)
    try:
        check_schedule_fits(config, schedule, env)
        agent = build_agent(config, env)
        run_dir = into or rundir.create(config.run_dir, config.name or config.default_name())
        config.name = run_dir.name
        with _training(run_dir):
            with writing(f"the configuration in {run_dir}"):
                config.save(run_dir / rundir.CONFIG_FILE)
                rundir.write_json(run_dir, rundir.VERSIONS_FILE, library_versions())
            return _learn(config, schedule, agent, run_dir, checkpoint=None, hparam_keys=hparam_keys)
    finally:
        env.close()


def resume(run_dir: str | Path) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint, with its saved configuration.

    A ConfigError (nothing written) if ``run_dir`` is not a run, is complete, has no checkpoint, or its
    last checkpoint is corrupt or from another agent or environment; :class:`~nested_ac.rundir.RunDirBusy`
    if another process trains it now. What a dead process wrote to TensorBoard after the checkpoint is
    dropped first (:func:`~nested_ac.events.rewind_events`).
    """
    run_dir = Path(run_dir)
    if not rundir.is_run(run_dir):
        raise ConfigError(f"{run_dir} is not a run directory (no {rundir.CONFIG_FILE})")
    with _training(run_dir):
        return _resume(run_dir)


def _resume(run_dir: Path) -> RunResult:
    if rundir.is_finished(run_dir):
        raise ConfigError(f"run {run_dir} is complete ({rundir.MODEL_FILE} exists); nothing to resume")
    config = resolve_config(run_dir / rundir.CONFIG_FILE)
    _warn_if_versions_changed(run_dir)
    store = CheckpointStore(run_dir / rundir.CHECKPOINT_DIR, config.checkpoint.keep)
    path = store.latest()
    state = store.load(path)
    validate(config)
    schedule = make_schedule(config)
    torch.set_num_threads(config.torch_threads)
    env = make_env(config)
    try:
        agent = build_agent(config, env)
        checkpoint.check_compatible(state, agent, config.agent, config.env.id, path)
        if "events" in state:
            rewind_events(run_dir, state["events"])
        return _learn(config, schedule, agent, run_dir, checkpoint=state)
    finally:
        env.close()


def write_summary(
    run_dir: Path,
    episodes: list[tuple[int, float, int]],
    switches: list[tuple[int, int]],
    steps_budget: int,
    agent: BaseAlgorithm,
    logger: Logger,
    R_min: float | None = None,
    notes: Sequence[str] = (),
    window: int = 0,
) -> dict[str, Any]:
    """Write the run's continual metrics to ``summary.json`` and TensorBoard (``continual/*``): R_k and P_k
    at each phase's last step (with the collapse and sustain lines, :data:`dashboard.THRESHOLDS`), the
    run-level numbers at the final step. Phases end at ``steps``: the last
    rollout may overshoot it, and a switch there starts no phase. ``R_min``: the env's return floor if
    any (P_k then measures the return above it). ``notes``: what the reader of the numbers must know
    (``summary.json``'s ``notes``, repeated by the report). ``window`` > 0: also the windowed metrics
    (``summary.json``'s ``windows``; ``windows/R`` and ``windows/P`` at each window's last step)."""
    total = agent.num_timesteps
    phases = continual.phases_from_switches(switches or [(0, 0)], steps_budget)
    steps = [step for step, _, _ in episodes]
    returns = [episode_return for _, episode_return, _ in episodes]
    summary = continual.summarize(steps, returns, phases, R_min=R_min, copies=agent.n_envs)
    summary["notes"] = list(notes)
    if window:
        summary["windows"] = continual.window_summary(steps, returns, steps_budget, window, R_min)
    missing = [k + 1 for k, R in enumerate(summary["R"]) if R is None]
    if missing:
        warnings.warn(
            f"no episode ended in task(s) {missing} of {run_dir}: their R_k is missing and left out of "
            "P_late; make each task longer than a copy's longest episode times the number of copies",
            stacklevel=2,
        )
    rundir.write_json(run_dir, rundir.SUMMARY_FILE, summary)
    for pending in (logger.name_to_value, logger.name_to_count, logger.name_to_excluded):
        pending.clear()  # the last update's values, which SB3 never writes
    for (_, end, _), R, P in zip(phases, summary["R"], summary["P"], strict=True):
        for name, value in (("R", R), ("P", P)):
            if value is not None:
                logger.record(f"continual/{name}", value)
        for tag, value in dashboard.THRESHOLDS.items():
            logger.record(tag, value)
        logger.dump(end)
    windows = summary.get("windows")
    for end, R, P in zip(*(windows[key] for key in ("ends", "R", "P")), strict=True) if windows else ():
        for name, value in (("R", R), ("P", P)):
            if value is not None:
                logger.record(f"windows/{name}", value)
        logger.dump(end)
    for tag, value in dashboard.final_metrics(summary).items():
        logger.record(tag, value)
    logger.dump(total)
    return summary


def write_run_report(run_dir: Path) -> Path:
    """A finished run's own report, ``<run>/report/report.md`` with its figures, the figures also in the
    run's TensorBoard Images tab; returns the report's path."""
    from nested_ac.report import write_report

    report = write_report([run_dir], run_dir / rundir.REPORT_DIR).path
    dashboard.add_report_images(run_dir, report)
    return report


def run_switches(clock: TaskClock | None, announced: AnnouncedTasks) -> list[tuple[int, int]]:
    """The run's ``(step, task)`` switches: the env's announcements where it made any, else the clock's."""
    if announced.active:
        return announced.switches
    return clock.switches if clock is not None else []


def _learn(
    config: RunConfig,
    schedule: TaskSchedule,
    agent: BaseAlgorithm,
    run_dir: Path,
    checkpoint: dict[str, Any] | None,
    hparam_keys: Sequence[str] = (),
) -> RunResult:
    """Train ``agent`` to ``config.steps`` in ``run_dir``, first restoring ``checkpoint`` if given."""
    tensorboard = TensorBoardOutputFormat(str(run_dir))
    events = DeferredOutput(tensorboard, defer=config.checkpoint.every > 0)
    logger = Logger(str(run_dir), [events])
    agent.set_logger(logger)
    episodes = EpisodeStats()
    clock = (
        TaskClock(
            schedule,
            config.env.schedule.at_episode_boundary,
            end=config.steps,
            since_last_switch=config.env.schedule.since_last_switch,
        )
        if agent.get_env().has_attr("set_task")
        else None
    )
    announced = AnnouncedTasks(clock)
    switching = clock is not None or announces_tasks(agent.get_env())
    windowed = config.metrics.window > 0
    dashboard.start_run(tensorboard.writer, run_dir, config, agent, switching, hparam_keys, windowed)
    parts = {
        "episode_stats": episodes,
        **({"task_clock": clock} if clock is not None else {}),
        "announced_tasks": announced,
    }
    start = time.perf_counter()
    with InterruptGuard() as guard:
        checkpointer = Checkpointer(
            CheckpointStore(run_dir / rundir.CHECKPOINT_DIR, config.checkpoint.keep),
            config.checkpoint.every,
            (config.agent, config.env.id),
            parts,
            events,
            guard,
        )
        callbacks = [checkpointer, episodes, Throughput(), EnvFaultCheck()]
        if clock is not None:
            callbacks.append(clock)
        callbacks.append(announced)  # after the clock: its task/index overrides the clock's
        if config.progress_bar:
            callbacks.append(ProgressBar())
        try:
            if checkpoint is not None:
                restore(agent, checkpoint, parts, logger)
            agent.learn(
                total_timesteps=config.steps - agent.num_timesteps,
                callback=CallbackList(callbacks),
                reset_num_timesteps=checkpoint is None,
            )
            if checkpointer.stopped_at is None:  # a finished run: its continual metrics
                switches = run_switches(clock, announced)
                floor = return_floor(config, agent.get_env())
                note = floor_note(config.env.id, episodes.episodes, floor)
                notes = [note] if note else []
                summary = write_summary(
                    run_dir,
                    episodes.episodes,
                    switches,
                    config.steps,
                    agent,
                    logger,
                    floor,
                    notes,
                    config.metrics.window,
                )
            with writing("a TensorBoard event file"):
                events.flush()
        except NumericalFault as fault:
            fault.last_checkpoint = checkpointer.store.latest() if checkpointer.store.paths() else None
            raise
        finally:
            with contextlib.suppress(OSError):  # a failed write has raised already; closing repeats it
                logger.close()
    if checkpointer.stopped_at is not None:
        raise TrainingInterrupted(guard.signum, checkpointer.stopped_at, str(run_dir))

    def save_model(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            agent.save(file)

    model = run_dir / rundir.MODEL_FILE
    replace_atomically(model, save_model, str(model))
    seconds = time.perf_counter() - start  # the training's, not the report's
    if config.report:
        write_run_report(run_dir)
    switches = run_switches(clock, announced)
    return RunResult(config, run_dir, episodes.episodes, switches, seconds, agent.num_timesteps, summary)
