"""Non-stationary classic-control worlds: Gymnasium's five classic-control tasks, each with four kinds of
change per task, and the two-task CartPole for forgetting studies.

The kinds of change (one :class:`~nested_ac.envs.worlds.World` each):

- ``Permuted<Task>``: the observation's entries permuted and sign-flipped anew per task
  (:class:`~nested_ac.envs.effects.ObservationPermutation`): every learned input feature loses its
  meaning at once, the input-permutation setting of plasticity studies (Dohare et al., Nature 2024;
  Elsayed & Mahmood, ICLR 2024).
- ``ActionPermuted<Task>`` (discrete actions) / ``ActionFlipped<Task>`` (continuous actions): the actions
  permuted, or each action entry's sign flipped, at random per task (the action remappings of Abbas et
  al., CoLLAs 2023): what the agent sees keeps its meaning, what its choices do changes.
- ``Drifting<Task>``: physical parameters redrawn per task (cf. the changing friction and masses of
  Dohare et al., Nature 2024): the same task under other dynamics.
- ``Remapped<Task>``: the first two at once, drawn independently: what the agent sees and what its
  actions do both lose their meaning at each switch.

Every task uses the dynamics, rewards and time limits of Gymnasium's own task; the vector form steps all
copies as one array (:mod:`nested_ac.envs.numpy_classic`). ``return_floor``: the lowest episode return
the task can give where returns are negative (the plasticity ratio P_k measures the return above it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from nested_ac.envs.effects import (
    ActionPermutation,
    ActionSignFlip,
    ObservationPermutation,
    ParameterDrift,
    TaskEffect,
)
from nested_ac.envs.numpy_classic import (
    AcrobotVectorEnv,
    ContinuousMountainCarVectorEnv,
    MountainCarVectorEnv,
    PendulumVectorEnv,
)
from nested_ac.envs.vector import SameStepCartPoleVectorEnv
from nested_ac.envs.worlds import World
from nested_ac.errors import ConfigError


def permuted_observation(observations: gym.spaces.Space, actions: gym.spaces.Space) -> list[TaskEffect]:
    return [ObservationPermutation(observations)]


def permuted_actions(observations: gym.spaces.Space, actions: gym.spaces.Space) -> list[TaskEffect]:
    return [ActionPermutation(actions)]


def flipped_actions(observations: gym.spaces.Space, actions: gym.spaces.Space) -> list[TaskEffect]:
    return [ActionSignFlip(actions)]


def remapped(observations: gym.spaces.Space, actions: gym.spaces.Space) -> list[TaskEffect]:
    """The observation permuted and sign-flipped, and the actions permuted (discrete) or sign-flipped."""
    action_change = permuted_actions if isinstance(actions, gym.spaces.Discrete) else flipped_actions
    return permuted_observation(observations, actions) + action_change(observations, actions)


@dataclass(frozen=True)
class Drift:
    """Physical parameters ``(name, low, high, log_uniform)`` of the base task, each redrawn per task."""

    parameters: tuple[tuple[str, float, float, bool], ...]

    def __call__(self, observations: gym.spaces.Space, actions: gym.spaces.Space) -> list[TaskEffect]:
        return [ParameterDrift(name, low, high, log) for name, low, high, log in self.parameters]

    def describe(self) -> str:
        return " and ".join(
            f"{name} {'log-uniform ' if log else ''}in [{low:g}, {high:g}]"
            for name, low, high, log in self.parameters
        )


@dataclass(frozen=True)
class ClassicTask:
    """A Gymnasium classic-control task: its id, vectorized form, return floor and physical drift."""

    name: str
    base_id: str
    vector_base: type[gym.vector.VectorEnv]
    discrete: bool
    return_floor: float | None
    drift: Drift


CLASSIC_TASKS = (
    ClassicTask(
        "CartPole",
        "CartPole-v1",
        SameStepCartPoleVectorEnv,
        True,
        None,
        Drift((("gravity", 4.9, 19.6, False), ("length", 0.25, 1.0, False))),
    ),
    ClassicTask(
        "Acrobot",
        "Acrobot-v1",
        AcrobotVectorEnv,
        True,
        -500.0,  # -1 per step, 500 steps at most
        Drift((("LINK_MASS_1", 0.5, 2.0, True), ("LINK_MASS_2", 0.5, 2.0, True))),
    ),
    ClassicTask(
        "Pendulum",
        "Pendulum-v1",
        PendulumVectorEnv,
        False,
        -200 * (math.pi**2 + 0.1 * 8**2 + 0.001 * 2**2),  # 200 steps at the worst cost each
        Drift((("g", 5.0, 15.0, False), ("m", 0.5, 2.0, True))),
    ),
    ClassicTask(
        "MountainCar",
        "MountainCar-v0",
        MountainCarVectorEnv,
        True,
        -200.0,  # -1 per step, 200 steps at most
        Drift((("force", 0.0009, 0.0012, False), ("gravity", 0.002, 0.0028, False))),
    ),
    ClassicTask(
        "MountainCarContinuous",
        "MountainCarContinuous-v0",
        ContinuousMountainCarVectorEnv,
        False,
        -0.1 * 999,  # -0.1·a² per step with |a| ≤ 1 (SB3 clips actions to the box), 999 steps at most
        Drift((("power", 0.0012, 0.002, False),)),
    ),
)


def classic_worlds() -> dict[str, tuple[World, str, float | None]]:
    """Every classic-control world by name: ``(world, what changes, return floor)``."""
    worlds: dict[str, tuple[World, str, float | None]] = {}
    for task in CLASSIC_TASKS:
        kinds = [
            ("Permuted", permuted_observation, "observation permuted and sign-flipped"),
            ("ActionPermuted", permuted_actions, "actions permuted")
            if task.discrete
            else ("ActionFlipped", flipped_actions, "each action entry's sign flipped at random"),
            ("Drifting", task.drift, task.drift.describe() + " redrawn"),
            (
                "Remapped",
                remapped,
                "observation permuted and sign-flipped, and actions "
                + ("permuted" if task.discrete else "sign-flipped"),
            ),
        ]
        for prefix, effects, changes in kinds:
            world = World(task.base_id, task.vector_base, effects)
            worlds[f"{prefix}{task.name}-v0"] = (world, changes, task.return_floor)
    return worlds


class TwoTasks(gym.Wrapper):
    """Exactly two tasks, for forgetting studies: task 0 is CartPole-v1 as is, task 1 the same CartPole
    with its observation permuted and sign-flipped (a fixed permutation from ``task_seed``).

    With the default cyclic schedule A, B, A, B … (50 000 steps each) the return on a task's second visit,
    against its first, measures forgetting (the recurring-task protocol of Kirkpatrick et al., PNAS 2017,
    and Wolczyk et al., NeurIPS 2021). ``num_tasks`` = 2; any other task is an error.
    """

    num_tasks = 2

    def __init__(self, task_seed: int = 0, **kwargs) -> None:
        super().__init__(gym.make("CartPole-v1", **kwargs))
        self.permuted = ObservationPermutation(self.env.observation_space)
        self.permuted.draw(np.random.default_rng([int(task_seed), 1]))
        self.observation_space = self.permuted.observation_space(self.env.observation_space)
        self.task = 0

    def set_task(self, task: int) -> None:
        """Task 0: plain CartPole; task 1: permuted observation."""
        if task not in (0, 1):
            raise ConfigError(f"task {task} is out of range for TwoTasks; valid tasks: 0, 1")
        self.task = int(task)

    def _observe(self, observation: np.ndarray) -> np.ndarray:
        return self.permuted.observation(observation) if self.task == 1 else observation

    def reset(self, **kwargs) -> tuple[np.ndarray, dict]:
        observation, info = self.env.reset(**kwargs)
        return self._observe(observation), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(observation), reward, terminated, truncated, info
