"""Worlds made of a base task and the task effects that change it, with a single and a vector form.

A :class:`World` names a Gymnasium task (``Acrobot-v1``), its numpy-vectorized twin
(:mod:`nested_ac.envs.numpy_classic`) and the effects a task switch redraws (a permutation of the
observation, of the actions, a physical parameter ...). ``world.single`` builds one environment through
:class:`~nested_ac.envs.wrappers.TaskWrapper`; ``world.vector`` builds every copy as one array through
:class:`~nested_ac.envs.wrappers.VectorTaskWrapper` (the trainer's fast path). Both draw each task's state
from ``default_rng([task_seed, task])`` through the same effect classes, so the two forms see the same
sequence of worlds. :func:`register_world` registers one under ``nested_ac/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym

from nested_ac.envs.effects import TaskEffect
from nested_ac.envs.registry import register_nonstationary
from nested_ac.envs.wrappers import TaskWrapper, VectorTaskWrapper

EffectsOf = Callable[[gym.spaces.Space, gym.spaces.Space], list[TaskEffect]]
"""The effects of a world, built from the base task's single observation and action spaces."""


@dataclass(frozen=True)
class World:
    """A base task, its vectorized twin (or None) and the effects each task switch redraws."""

    base_id: str
    vector_base: Callable[..., gym.vector.VectorEnv] | None
    effects: EffectsOf

    def single(self, task_seed: int = 0, **kwargs) -> gym.Env:
        """One environment: the base task under every effect (innermost first)."""
        env = gym.make(self.base_id, **kwargs)
        for effect in self.effects(env.observation_space, env.action_space):
            env = TaskWrapper(env, effect, task_seed)
        return env

    def vector(self, num_envs: int, task_seed: int = 0, **kwargs) -> gym.vector.VectorEnv:
        """``num_envs`` copies in one array, every copy on the same task."""
        if self.vector_base is None:
            raise ValueError(f"{self.base_id} has no vectorized form")
        env = self.vector_base(num_envs=num_envs, **kwargs)
        for effect in self.effects(env.single_observation_space, env.single_action_space):
            env = VectorTaskWrapper(env, effect, task_seed)
        return env


def register_world(
    name: str,
    world: World,
    changes: str,
    default_every: int,
    return_floor: float | None = None,
) -> str:
    """Register ``nested_ac/<name>`` built from ``world`` (its vector form, if any, is the fast path)."""
    return register_nonstationary(
        name,
        world.single,
        changes=changes,
        default_every=default_every,
        vector_entry_point=world.vector if world.vector_base is not None else None,
        return_floor=return_floor,
    )
