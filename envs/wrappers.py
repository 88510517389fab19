"""Composable Gymnasium wrappers that turn any environment into a non-stationary one.

A *task* is a non-negative integer. Each wrapper derives what a task means (a permutation, a sign flip
...) from ``(task_seed, task)`` alone, so every parallel copy of an environment built with the same
``task_seed`` agrees on every task, and the same run seed gives the same sequence of worlds.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class TaskWrapper(gym.Wrapper):
    """Base class: holds the current task and rebuilds the wrapper's per-task state on ``set_task``."""

    def __init__(self, env: gym.Env, task_seed: int = 0) -> None:
        super().__init__(env)
        self.task_seed = int(task_seed)
        self.task = -1
        self.set_task(0)

    def set_task(self, task: int) -> None:
        """Switch the world to ``task`` (takes effect from the next step or reset)."""
        if int(task) < 0:
            raise ValueError(f"a task is a non-negative integer, got {task}")
        self.task = int(task)
        self.apply_task(np.random.default_rng([self.task_seed, self.task]))

    def apply_task(self, rng: np.random.Generator) -> None:
        """Draw this wrapper's per-task state from ``rng`` (seeded by ``task_seed`` and the task)."""
        raise NotImplementedError


class PermuteObservation(TaskWrapper, gym.ObservationWrapper):
    """Per task, a fixed random permutation and sign flip of the (flat, Box) observation's entries.

    ``obs'[i] = sign[i] · obs[perm[i]]`` with ``perm`` a uniformly random permutation and ``sign`` uniform in
    {-1, +1}, both redrawn for each task — the input-permutation non-stationarity used in plasticity studies
    (e.g. Dohare et al., Nature 2024; Elsayed & Mahmood, ICLR 2024, on permuted inputs).
    """

    def __init__(self, env: gym.Env, task_seed: int = 0) -> None:
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"PermuteObservation needs a flat Box observation space, got {space}")
        self._size = space.shape[0]
        super().__init__(env, task_seed)
        # Bounds of a permuted, sign-flipped box: the union of every task's bounds stays valid.
        bound = np.maximum(np.abs(space.low), np.abs(space.high)).max()
        self.observation_space = gym.spaces.Box(-bound, bound, shape=space.shape, dtype=space.dtype)

    def apply_task(self, rng: np.random.Generator) -> None:
        self.permutation = rng.permutation(self._size)
        self.signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=self._size)

    def observation(self, observation: Any) -> Any:
        return (self.signs * observation[self.permutation]).astype(observation.dtype, copy=False)
