"""Candidate worlds for the headline study's world search (plug-in envs, not part of the library).

Each is numpy-vectorized CartPole (the trainer's fast path) with one kind of task change that keeps the
learned features useful, unlike a permutation of the inputs, which makes every feature useless at once.
Use with ``PYTHONPATH=bench/world_search`` and ``--env worlds:<Id>``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from nested_ac.envs import World, register_world
from nested_ac.envs.effects import ActionPermutation, ObservationOffset, TaskEffect
from nested_ac.envs.vector import SameStepCartPoleVectorEnv


class ObservationScale(TaskEffect):
    """``obs'[i] = s[i]·obs[i]``, ``s[i]`` log-uniform in ``[1/factor, factor]`` per entry and task."""

    def __init__(self, space: gym.spaces.Space, factor: float) -> None:
        self.size, self.factor = space.shape[0], float(factor)

    def draw(self, rng: np.random.Generator) -> None:
        log = np.log(self.factor)
        self.scale = np.exp(rng.uniform(-log, log, size=self.size)).astype(np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return (observation * self.scale).astype(observation.dtype, copy=False)

    def observation_space(self, space: gym.spaces.Space) -> gym.spaces.Box:
        return gym.spaces.Box(space.low * self.factor, space.high * self.factor, dtype=space.dtype)


WORLDS = {
    # name: (what changes, effects)
    "OffsetCartPole-v0": (
        "observation shifted by an offset uniform in [-1, 1] per entry",
        lambda obs, act: [ObservationOffset(obs, 1.0)],
    ),
    "ScaledCartPole-v0": (
        "observation entries scaled by factors log-uniform in [1/8, 8]",
        lambda obs, act: [ObservationScale(obs, 8.0)],
    ),
    "ReversalCartPole-v0": (
        "the two actions swapped or not, at random per task",
        lambda obs, act: [ActionPermutation(act)],
    ),
    "OffsetReversalCartPole-v0": (
        "observation offset in [-1, 1] and actions swapped at random",
        lambda obs, act: [ObservationOffset(obs, 1.0), ActionPermutation(act)],
    ),
}

for _name, (_changes, _effects) in WORLDS.items():
    _world = World("CartPole-v1", SameStepCartPoleVectorEnv, _effects)
    register_world(_name, _world, changes=_changes, default_every=100_000)
