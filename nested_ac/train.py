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
import json
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

import nested_ac.optimizers  # noqa: F401  (registers the optimizers)
from nested_ac import (
    agents,  # noqa: F401  (registers the agents)
    checkpoint,
    continual,
    dashboard,
    envs,
)
from nested_ac.callbacks import EpisodeStats, ProgressBar, TaskClock, Throughput
from nested_ac.checkpoint import Checkpointer, CheckpointStore, restore
from nested_ac.config import RunConfig, resolve_config
from nested_ac.errors import ConfigError, unknown_choice
from nested_ac.events import DeferredOutput, rewind_events
from nested_ac.faults import EnvFaultCheck, NumericalFault
from nested_ac.interrupts import InterruptGuard, TrainingInterrupted
from nested_ac.registry import AGENTS, OPTIMIZERS
from nested_ac.rundir import DiskFull, hold, replace_atomically, writing

SCHEDULE_KINDS = ("every", "cyclic", "random", "explicit")
CHECKPOINT_DIR = "checkpoints"


@dataclass
class RunResult:
    """Where a finished run lives and what it saw; ``steps``: the steps it trained, at least
    ``config.steps`` (PPO trains whole rollouts, so the last one may run past it)."""

    config: RunConfig
    run_dir: Path
    episodes: list[tuple[int, float, int]]
    switches: list[tuple[int, int]]
    seconds: float
    steps: int


def validate(config: RunConfig) -> gym.envs.registration.EnvSpec:
    """Every name in ``config`` exists (agent, optimizer, env, schedule); returns the env's spec."""
    AGENTS.get(config.agent)
    OPTIMIZERS.get(config.optimizer.name)
    kind = config.env.schedule.kind
    if kind is not None and kind not in SCHEDULE_KINDS:
        raise unknown_choice("schedule kind", kind, SCHEDULE_KINDS)
    return envs.resolve_env_id(config.env.id)


def _task_list(tasks: list[int] | None, kind: str) -> tuple[int, ...]:
    if tasks is None:
        raise ConfigError(
            f"schedule kind {kind!r} needs env.schedule.tasks, e.g. --set env.schedule.tasks=[0,1]"
        )
    if not tasks:
        raise ConfigError(f"env.schedule.tasks is empty; schedule kind {kind!r} needs at least one task")
    if min(tasks) < 0:
        raise ConfigError(f"env.schedule.tasks must be non-negative integers, got {tasks}")
    return tuple(tasks)


def _switch_list(switches: list[list[int]], steps: int) -> tuple[tuple[int, int], ...]:
    if not switches:
        raise ConfigError("env.schedule.switches is empty; kind 'explicit' needs [[step, task], ...]")
    pairs = []
    for pair in switches:
        if len(pair) != 2 or min(pair) < 0:
            raise ConfigError(f"env.schedule.switches: each entry is [step, task] >= 0, got {pair}")
        pairs.append((pair[0], pair[1]))
    at = [step for step, _ in pairs]
    if at != sorted(set(at)):
        raise ConfigError(f"env.schedule.switches: steps must be strictly increasing, got {at}")
    if at[-1] >= steps:
        raise ConfigError(
            f"env.schedule.switches: the switch at step {at[-1]:,} lies beyond the run's {steps:,} steps"
        )
    return tuple(pairs)


def make_schedule(config: RunConfig) -> envs.Schedule:
    """The configured schedule; fills the env's defaults into ``config.env.schedule`` (kind, every, tasks).

    Defaults: the nested-ac env's own schedule (``nested-ac list envs``); stationary for other envs.
    A ConfigError for an empty task set, a cyclic/random schedule without a positive ``every``, or an
    explicit switch at or past ``steps`` (a schedule longer than the run).
    """
    info = envs.NONSTATIONARY_ENVS.get(config.env.id)
    schedule = config.env.schedule
    if schedule.kind is None:
        schedule.kind = info.default_kind if info else "every"
    if schedule.every is None:
        schedule.every = info.default_every if info else 0
    if schedule.tasks is None and info is not None and info.default_tasks is not None:
        schedule.tasks = list(info.default_tasks)
    if schedule.kind == "explicit":
        return envs.Explicit(_switch_list(schedule.switches, config.steps))
    if schedule.kind == "every":
        return envs.EveryNSteps(schedule.every)
    tasks = _task_list(schedule.tasks, schedule.kind)
    if schedule.every <= 0:
        raise ConfigError(
            f"schedule kind {schedule.kind!r} needs env.schedule.every > 0, got {schedule.every}"
        )
    if schedule.kind == "cyclic":
        return envs.Cyclic(schedule.every, tasks)
    return envs.RandomDraw(schedule.every, tasks, config.seed)


def check_schedule_fits(config: RunConfig, schedule: envs.Schedule, env: VecEnv) -> None:
    """A ConfigError if the env cannot follow ``schedule``: no ``set_task``, or a task past ``num_tasks``."""
    tasks = schedule.tasks_before(config.steps)
    if tasks == {0}:
        return
    if not env.has_attr("set_task"):
        raise ConfigError(
            f"env {config.env.id!r} has no set_task, so it cannot follow a schedule; make it non-stationary "
            "with a wrapper (e.g. envs.PermuteObservation, envs.DriftAttribute) or a set_task method, or set "
            "env.schedule.every=0 for a stationary run"
        )
    limit = env.get_attr("num_tasks")[0] if env.has_attr("num_tasks") else None
    if limit is not None and max(tasks) >= limit:
        raise ConfigError(
            f"the schedule reaches task {max(tasks)}, but env {config.env.id!r} has {limit} tasks "
            f"(0 … {limit - 1}); set env.schedule.tasks or env.schedule.every"
        )


def make_env(config: RunConfig) -> VecEnv:
    """``n_envs`` copies of the env, seeded from the run seed; nested-ac envs get ``task_seed`` = seed.

    The fast path: where the env has a same-step numpy-vectorized implementation and ``env.vectorized``
    is on, one vector env behind :class:`nested_ac.envs.GymnasiumVecEnv`; otherwise SB3's ``DummyVecEnv``.
    Per-copy switching at episode boundaries needs separate copies, so it always takes the ``DummyVecEnv``.
    """
    kwargs = dict(config.env.kwargs)
    if config.env.id in envs.NONSTATIONARY_ENVS:
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


def create_run_dir(parent: str | Path, name: str) -> Path:
    """A new directory ``parent/name``, or ``parent/name_1``, ``_2``... if taken; never an existing one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    candidate, suffix = parent / name, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = parent / f"{name}_{suffix}"


def build_agent(config: RunConfig, env: VecEnv) -> BaseAlgorithm:
    return AGENTS.get(config.agent).from_config(config, env)


VERSIONS_FILE = "versions.json"
LIBRARIES = ("nested-ac", "torch", "numpy", "gymnasium", "stable-baselines3")


def library_versions() -> dict[str, str]:
    """Python's and the numerical libraries' versions: what a run's numbers depend on besides its config."""
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in LIBRARIES}}


def _warn_if_versions_changed(run_dir: Path) -> None:
    path = run_dir / VERSIONS_FILE
    if not path.is_file():
        return
    saved, now = json.loads(path.read_text()), library_versions()
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
            store = CheckpointStore(run_dir / CHECKPOINT_DIR, keep=1)
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
        run_dir = into or create_run_dir(config.run_dir, config.name or config.default_name())
        config.name = run_dir.name
        with _training(run_dir):
            with writing(f"the configuration in {run_dir}"):
                config.save(run_dir / "config.yaml")
                (run_dir / VERSIONS_FILE).write_text(json.dumps(library_versions(), indent=1))
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
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    with _training(run_dir):
        return _resume(run_dir)


def _resume(run_dir: Path) -> RunResult:
    if (run_dir / "model.zip").exists():
        raise ConfigError(f"run {run_dir} is complete (model.zip exists); nothing to resume")
    config = resolve_config(run_dir / "config.yaml")
    _warn_if_versions_changed(run_dir)
    store = CheckpointStore(run_dir / CHECKPOINT_DIR, config.checkpoint.keep)
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
) -> dict[str, Any]:
    """Write the run's continual metrics to ``summary.json`` and TensorBoard (``continual/*``): R_k and P_k
    at each phase's last step, the run-level numbers at the final step. Phases end at ``steps``: the last
    rollout may overshoot it, and a switch there starts no phase. ``R_min``: the env's return floor if
    any (P_k then measures the return above it)."""
    total = agent.num_timesteps
    phases = continual.phases_from_switches(switches or [(0, 0)], steps_budget)
    steps = [step for step, _, _ in episodes]
    summary = continual.summarize(
        steps, [episode_return for _, episode_return, _ in episodes], phases, R_min=R_min
    )
    with writing(f"{run_dir / 'summary.json'}"):
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    for pending in (logger.name_to_value, logger.name_to_count, logger.name_to_excluded):
        pending.clear()  # the last update's values, which SB3 never writes
    for (_, end, _), R, P in zip(phases, summary["R"], summary["P"], strict=True):
        for name, value in (("R", R), ("P", P)):
            if value is not None:
                logger.record(f"continual/{name}", value)
        logger.dump(end)
    for tag, value in dashboard.final_metrics(summary).items():
        logger.record(tag, value)
    logger.dump(total)
    return summary


def _learn(
    config: RunConfig,
    schedule: envs.Schedule,
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
        TaskClock(schedule, config.env.schedule.at_episode_boundary)
        if agent.get_env().has_attr("set_task")
        else None
    )
    dashboard.start_run(tensorboard.writer, run_dir, config, agent, clock is not None, hparam_keys)
    parts = {"episode_stats": episodes, **({"task_clock": clock} if clock is not None else {})}
    start = time.perf_counter()
    with InterruptGuard() as guard:
        checkpointer = Checkpointer(
            CheckpointStore(run_dir / CHECKPOINT_DIR, config.checkpoint.keep),
            config.checkpoint.every,
            (config.agent, config.env.id),
            parts,
            events,
            guard,
        )
        callbacks = [checkpointer, episodes, Throughput(), EnvFaultCheck()]
        if clock is not None:
            callbacks.append(clock)
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
                switches = clock.switches if clock else []
                info = envs.NONSTATIONARY_ENVS.get(config.env.id)
                floor = info.return_floor if info else None
                write_summary(run_dir, episodes.episodes, switches, config.steps, agent, logger, floor)
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

    replace_atomically(run_dir / "model.zip", save_model, str(run_dir / "model.zip"))
    switches = clock.switches if clock is not None else []
    seconds = time.perf_counter() - start
    return RunResult(config, run_dir, episodes.episodes, switches, seconds, agent.num_timesteps)
