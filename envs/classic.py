"""Non-stationary classic-control environments (entry points of the ``nested_ac/`` ids)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from nested_ac.envs.effects import ObservationPermutation, ParameterDrift
from nested_ac.envs.vector import SameStepCartPoleVectorEnv
from nested_ac.envs.wrappers import DriftAttribute, PermuteObservation, VectorTaskWrapper
from nested_ac.errors import ConfigError


def permuted_cartpole(task_seed: int = 0, **kwargs) -> gym.Env:
    """CartPole-v1 whose 4 observation entries are permuted and sign-flipped anew for each task.

    What changes: the meaning of each input of the agent (``PermuteObservation``); the dynamics, actions
    and rewards stay those of CartPole. Default: a new task every 200 000 steps. A fresh network learns
    each task, so a drop in the return after a switch measures lost plasticity (cf. Dohare et al.,
    Nature 2024, and the permuted-input benchmarks of Elsayed & Mahmood, ICLR 2024).
    """
    return PermuteObservation(gym.make("CartPole-v1", **kwargs), task_seed=task_seed)


def permuted_cartpole_vector(num_envs: int, task_seed: int = 0, **kwargs) -> gym.vector.VectorEnv:
    """The numpy-vectorized ``permuted_cartpole``: same tasks, every copy in one array."""
    env = SameStepCartPoleVectorEnv(num_envs=num_envs, **kwargs)
    return VectorTaskWrapper(env, ObservationPermutation(env.single_observation_space), task_seed)


# CartPole's gravity and pole length drift together; Dohare et al. (Nature 2024) change physical
# parameters of the world in the same way for their continual-RL studies.
CARTPOLE_DRIFT = (("gravity", 4.9, 19.6), ("length", 0.25, 1.0))


def drifting_cartpole(task_seed: int = 0, **kwargs) -> gym.Env:
    """CartPole-v1 whose gravity (4.9 … 19.6 m/s²) and pole half-length (0.25 … 1.0 m) are redrawn
    uniformly for each task; default: a new task every 100 000 steps (cf. Dohare et al., Nature 2024)."""
    env = gym.make("CartPole-v1", **kwargs)
    for name, low, high in CARTPOLE_DRIFT:
        env = DriftAttribute(env, name, low, high, task_seed=task_seed)
    return env


def drifting_cartpole_vector(num_envs: int, task_seed: int = 0, **kwargs) -> gym.vector.VectorEnv:
    """The numpy-vectorized ``drifting_cartpole``."""
    env: gym.vector.VectorEnv = SameStepCartPoleVectorEnv(num_envs=num_envs, **kwargs)
    for name, low, high in CARTPOLE_DRIFT:
        env = VectorTaskWrapper(env, ParameterDrift(name, low, high), task_seed)
    return env


def drifting_acrobot(task_seed: int = 0, **kwargs) -> gym.Env:
    """Acrobot-v1 whose two link masses are redrawn log-uniformly in [0.5, 2] kg for each task;
    default: a new task every 100 000 steps (cf. Dohare et al., Nature 2024)."""
    env = gym.make("Acrobot-v1", **kwargs)
    for name in ("LINK_MASS_1", "LINK_MASS_2"):
        env = DriftAttribute(env, name, 0.5, 2.0, log_uniform=True, task_seed=task_seed)
    return env


def drifting_pendulum(task_seed: int = 0, **kwargs) -> gym.Env:
    """Pendulum-v1 whose gravity ``g`` (5 … 15) and mass ``m`` (0.5 … 2, log-uniform) are redrawn for each
    task; default: a new task every 100 000 steps (cf. Dohare et al., Nature 2024)."""
    env = DriftAttribute(gym.make("Pendulum-v1", **kwargs), "g", 5.0, 15.0, task_seed=task_seed)
    return DriftAttribute(env, "m", 0.5, 2.0, log_uniform=True, task_seed=task_seed)


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
