"""The training entry point: builds the environment and the agent from a RunConfig and trains it.

A run writes ``<run_dir>/<name>/``: ``config.yaml`` (the resolved configuration), the TensorBoard event
file and ``model.zip``. An existing run directory is never reused: the new one gets a suffix ``_1``, ``_2``...
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv

import agents  # noqa: F401  (registers the agents)
import envs
import nested_ac.optimizers  # noqa: F401  (registers the optimizers)
from nested_ac.callbacks import EpisodeStats, TaskClock, Throughput
from nested_ac.config import RunConfig
from nested_ac.errors import ConfigError, unknown_choice
from nested_ac.registry import AGENTS, OPTIMIZERS

SCHEDULE_KINDS = ("every",)


@dataclass
class RunResult:
    """Where a finished run lives and what it saw."""

    config: RunConfig
    run_dir: Path
    episodes: list[tuple[int, float, int]]
    switches: list[tuple[int, int]]
    seconds: float


def validate(config: RunConfig) -> gym.envs.registration.EnvSpec:
    """Every name in ``config`` exists (agent, optimizer, env, schedule); returns the env's spec."""
    AGENTS.get(config.agent)
    OPTIMIZERS.get(config.optimizer.name)
    if config.env.schedule.kind not in SCHEDULE_KINDS:
        raise unknown_choice("schedule kind", config.env.schedule.kind, SCHEDULE_KINDS)
    return envs.resolve_env_id(config.env.id)


def make_schedule(config: RunConfig) -> envs.EveryNSteps:
    """The configured schedule; ``every`` = None takes the env's default (stationary for foreign envs)."""
    info = envs.NONSTATIONARY_ENVS.get(config.env.id)
    every = config.env.schedule.every
    if every is None:
        every = info.default_every if info else 0
    return envs.EveryNSteps(every)


def make_env(config: RunConfig) -> VecEnv:
    """``n_envs`` copies of the env, seeded from the run seed; nested-ac envs get ``task_seed`` = seed."""
    kwargs = dict(config.env.kwargs)
    if config.env.id in envs.NONSTATIONARY_ENVS:
        kwargs.setdefault("task_seed", config.seed)
    try:
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


def train(config: RunConfig) -> RunResult:
    """Train one agent as ``config`` says; bad input raises ConfigError before anything is written.

    ``config`` is not modified: the resolved copy (defaults filled in, final name) is ``result.config``.
    """
    validate(config)
    config = copy.deepcopy(config)
    schedule = make_schedule(config)
    config.env.schedule.every = schedule.every
    torch.set_num_threads(config.torch_threads)
    env = make_env(config)
    try:
        if schedule.every > 0 and not env.has_attr("set_task"):
            raise ConfigError(
                f"env {config.env.id!r} has no set_task, so it cannot follow a schedule; wrap it in a "
                "TaskWrapper (e.g. envs.PermuteObservation) or set env.schedule.every=0 for a stationary run"
            )
        agent = build_agent(config, env)
        run_dir = create_run_dir(config.run_dir, config.name or config.default_name())
        config.name = run_dir.name
        config.save(run_dir / "config.yaml")
        logger = configure(str(run_dir), ["tensorboard"])
        agent.set_logger(logger)
        episodes = EpisodeStats()
        callbacks = [episodes, Throughput()]
        clock = TaskClock(schedule) if env.has_attr("set_task") else None
        if clock is not None:
            callbacks.append(clock)
        start = time.perf_counter()
        try:
            agent.learn(
                total_timesteps=config.steps,
                callback=CallbackList(callbacks),
                progress_bar=config.progress_bar,
            )
        finally:
            logger.close()
        agent.save(run_dir / "model.zip")
        switches = clock.switches if clock is not None else []
        return RunResult(config, run_dir, episodes.episodes, switches, time.perf_counter() - start)
    finally:
        env.close()
