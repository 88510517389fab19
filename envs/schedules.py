"""Task schedules: a map from the global environment step (summed over parallel copies) to a task.

Every schedule is a pure function of the step (and, for :class:`RandomDraw`, the run seed), so a resumed
run and every parallel copy agree on the task without any state. :func:`make_schedule` builds the one a
run's ``env.schedule`` configures and validates it; :func:`check_schedule_fits` checks it against the env.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nested_ac.envs.registry import registration
from nested_ac.errors import ConfigError, unknown_choice

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

    from nested_ac.config import RunConfig

SCHEDULE_KINDS = ("every", "cyclic", "random", "explicit")


@dataclass(frozen=True)
class EveryNSteps:
    """A new task every ``every`` global steps: task = step // every; ``every = 0`` never switches."""

    every: int

    def task_at(self, step: int) -> int:
        return step // self.every if self.every > 0 else 0

    def tasks_before(self, steps: int) -> set[int]:
        return {0, self.task_at(max(steps - 1, 0))}

    def describe(self) -> str:
        return f"new task every {self.every:,} steps" if self.every > 0 else "stationary"


@dataclass(frozen=True)
class Cyclic:
    """Cycles through ``tasks`` (A, B, A, B …), ``every`` steps each: recurring tasks measure forgetting."""

    every: int
    tasks: tuple[int, ...]

    def task_at(self, step: int) -> int:
        return self.tasks[(step // self.every) % len(self.tasks)]

    def tasks_before(self, steps: int) -> set[int]:
        return set(self.tasks[: -(-steps // self.every)])

    def describe(self) -> str:
        return f"cycle through tasks {list(self.tasks)}, {self.every:,} steps each"


@dataclass(frozen=True)
class RandomDraw:
    """Every ``every`` steps a task drawn uniformly from ``tasks``; phase k's draw is seeded by (seed, k)."""

    every: int
    tasks: tuple[int, ...]
    seed: int

    def task_at(self, step: int) -> int:
        phase = step // self.every
        return self.tasks[int(np.random.default_rng([self.seed, phase]).integers(len(self.tasks)))]

    def tasks_before(self, steps: int) -> set[int]:
        return set(self.tasks)

    def describe(self) -> str:
        return f"random task from {list(self.tasks)} every {self.every:,} steps"


@dataclass(frozen=True)
class Explicit:
    """An explicit list of ``(step, task)`` switches; task 0 until the first one."""

    switches: tuple[tuple[int, int], ...]

    def task_at(self, step: int) -> int:
        task = 0
        for at, scheduled in self.switches:
            if at > step:
                break
            task = scheduled
        return task

    def tasks_before(self, steps: int) -> set[int]:
        return {0} | {task for at, task in self.switches if at < steps}

    def describe(self) -> str:
        return "tasks " + ", ".join(f"{task} from step {at:,}" for at, task in self.switches)


TaskSchedule = EveryNSteps | Cyclic | RandomDraw | Explicit


def check_kind(kind: str | None) -> None:
    """A ConfigError naming the valid kinds if ``kind`` (None: the env's default) is not one."""
    if kind is not None and kind not in SCHEDULE_KINDS:
        raise unknown_choice("schedule kind", kind, SCHEDULE_KINDS)


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


def make_schedule(config: RunConfig) -> TaskSchedule:
    """The configured schedule; fills the env's defaults into ``config.env.schedule`` (kind, every, tasks).

    Defaults: the nested-ac env's own schedule (``nested-ac list envs``); stationary for other envs.
    A ConfigError for an empty task set, a cyclic/random schedule without a positive ``every``, or an
    explicit switch at or past ``steps`` (a schedule longer than the run).
    """
    info = registration(config.env.id)
    schedule = config.env.schedule
    if schedule.kind is None:
        schedule.kind = info.default_kind if info else "every"
    if schedule.every is None:
        schedule.every = info.default_every if info else 0
    if schedule.tasks is None and info is not None and info.default_tasks is not None:
        schedule.tasks = list(info.default_tasks)
    if schedule.kind == "explicit":
        return Explicit(_switch_list(schedule.switches, config.steps))
    if schedule.kind == "every":
        return EveryNSteps(schedule.every)
    tasks = _task_list(schedule.tasks, schedule.kind)
    if schedule.every <= 0:
        raise ConfigError(
            f"schedule kind {schedule.kind!r} needs env.schedule.every > 0, got {schedule.every}"
        )
    if schedule.kind == "cyclic":
        return Cyclic(schedule.every, tasks)
    return RandomDraw(schedule.every, tasks, config.seed)


def announces_tasks(env: VecEnv) -> bool:
    """Whether the env declares that it announces its own tasks (an ``announces_tasks`` attribute that is
    true, on the env or any wrapper layer: :class:`nested_ac.callbacks.AnnouncedTasks`)."""
    return bool(env.has_attr("announces_tasks") and env.get_attr("announces_tasks", indices=[0])[0])


def check_schedule_fits(config: RunConfig, schedule: TaskSchedule, env: VecEnv) -> None:
    """A ConfigError if the env cannot follow ``schedule``: no ``set_task``, a task past ``num_tasks``, or
    an env that announces its own tasks (``announces_tasks``) under a schedule that switches."""
    tasks = schedule.tasks_before(config.steps)
    if tasks == {0}:
        return
    if announces_tasks(env):
        raise ConfigError(
            f"env {config.env.id!r} announces its own tasks (announces_tasks), so a schedule cannot switch "
            "them too; set env.schedule.every=0 (its announcements then give the tasks)"
        )
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
