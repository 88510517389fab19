"""Composable wrappers that turn any Gymnasium environment (or vector environment) into a non-stationary one.

A *task* is a non-negative integer. A wrapper holds one :class:`~nested_ac.envs.effects.TaskEffect` and
derives its per-task state from ``np.random.default_rng([task_seed, task])`` alone — the k-th task wrapper
of a stack (k ≥ 1, counted from the innermost, which is k = 0) from ``default_rng([task_seed, task, k])``,
so stacked effects draw independently — and every parallel copy built with the same ``task_seed`` agrees
on every task, and the same run seed gives the same sequence of worlds. Wrappers stack: ``set_task``
reaches every wrapper and, last, the base environment if it has its own ``set_task``.
The same effects wrap a Gymnasium vector environment through :class:`VectorTaskWrapper`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from nested_ac.envs.effects import (
    ActionPermutation,
    ActionSignFlip,
    ObservationOffset,
    ObservationPermutation,
    ParameterDrift,
    RewardScale,
    TaskEffect,
    flat_box,
)
from nested_ac.errors import ConfigError


def inner_attr(env: Any, name: str) -> Any:
    """``name`` from the outermost layer below ``env`` (wrappers are walked through ``.env``) that
    defines it; None if none does. Gymnasium vector wrappers do not forward attributes, so walk by hand."""
    layer = getattr(env, "env", None)
    while layer is not None:
        if name in vars(layer) or hasattr(type(layer), name):
            return getattr(layer, name)
        layer = getattr(layer, "env", None)
    return None


def _task_wrappers_below(env: Any) -> int:
    """How many task wrappers lie below ``env`` (walked through ``.env``)."""
    count, layer = 0, getattr(env, "env", None)
    while layer is not None:
        count += isinstance(layer, _TaskSwitching)
        layer = getattr(layer, "env", None)
    return count


class _TaskSwitching:
    """What single-env and vector task wrappers share: ``set_task``, the task range, the effect hooks."""

    env: Any
    effect: TaskEffect
    task_seed: int
    task: int

    def _setup(self, effect: TaskEffect, task_seed: int) -> None:
        self.effect = effect
        self.task_seed = int(task_seed)
        self.depth = _task_wrappers_below(self)
        self.task = -1
        check = getattr(effect, "check", None)
        if check is not None:
            check(self.env.unwrapped)
        self.set_task(0)

    @property
    def num_tasks(self) -> int | None:
        """How many tasks the wrapped environment has (None: unbounded)."""
        return inner_attr(self, "num_tasks")

    @property
    def task_parameters(self) -> dict[str, float]:
        """The physical parameters of the current task, of this wrapper and every one below it."""
        return {**(inner_attr(self, "task_parameters") or {}), **self.effect.parameters()}

    def set_task(self, task: int) -> None:
        """Switch the world to ``task`` (takes effect from the next step or reset)."""
        task = int(task)
        limit = self.num_tasks
        if task < 0 or (limit is not None and task >= limit):
            valid = f"0 … {limit - 1}" if limit is not None else "a non-negative integer"
            raise ConfigError(f"task {task} is out of range for this environment; valid tasks: {valid}")
        inner = inner_attr(self, "set_task")
        if inner is not None:
            inner(task)
        self.task = task
        stream = [self.task_seed, task] + ([self.depth] if self.depth else [])
        self.effect.draw(np.random.default_rng(stream))
        self.effect.apply(self.env.unwrapped)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        observation, info = self.env.reset(seed=seed, options=options)
        return self.effect.observation(observation), info

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict]:
        observation, reward, terminated, truncated, info = self.env.step(self.effect.action(action))
        return self.effect.observation(observation), self.effect.reward(reward), terminated, truncated, info


class TaskWrapper(_TaskSwitching, gym.Wrapper):
    """Applies one :class:`~nested_ac.envs.effects.TaskEffect` to a Gymnasium environment and switches it
    by task."""

    def __init__(self, env: gym.Env, effect: TaskEffect, task_seed: int = 0) -> None:
        gym.Wrapper.__init__(self, env)
        self.observation_space = effect.observation_space(env.observation_space)
        self._setup(effect, task_seed)


class VectorTaskWrapper(_TaskSwitching, gym.vector.VectorWrapper):
    """The same effect on a Gymnasium vector environment's batches; every copy is on the same task.

    Expects same-step autoreset: the final observations in ``info["final_obs"]`` are transformed too.
    """

    def __init__(self, env: gym.vector.VectorEnv, effect: TaskEffect, task_seed: int = 0) -> None:
        gym.vector.VectorWrapper.__init__(self, env)
        self.single_observation_space = effect.observation_space(env.single_observation_space)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, env.num_envs)
        self._setup(effect, task_seed)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        observations, rewards, terminated, truncated, info = super().step(actions)
        if "final_obs" in info:
            final = np.full(len(info["final_obs"]), None, dtype=object)  # one entry per copy, even when
            for i, obs in enumerate(info["final_obs"]):  # every copy ended (np.array would stack them)
                if obs is not None:
                    final[i] = self.effect.observation(obs)
            info["final_obs"] = final
        return observations, rewards, terminated, truncated, info


class PermuteObservation(TaskWrapper):
    """Per task, a fixed random permutation and sign flip of the flat observation's entries.

    ``obs'[i] = sign[i]·obs[perm[i]]``, redrawn per task: the input-permutation non-stationarity of
    plasticity studies (Dohare et al., Nature 2024; Elsayed & Mahmood, ICLR 2024).
    """

    def __init__(self, env: gym.Env, task_seed: int = 0) -> None:
        super().__init__(env, ObservationPermutation(env.observation_space), task_seed)


class OffsetObservation(TaskWrapper):
    """Per task, a fixed random shift of the observation, uniform in ``[-scale, scale]`` per entry.

    An input-distribution shift under the same dynamics (cf. Lyle et al., ICML 2023, on plasticity).
    """

    def __init__(self, env: gym.Env, scale: float = 1.0, task_seed: int = 0) -> None:
        super().__init__(env, ObservationOffset(env.observation_space, scale), task_seed)


class PermuteActions(TaskWrapper):
    """Per task, a random permutation of a Discrete action space (action ``a`` executes ``perm[a]``).

    The action-remapping non-stationarity of continual RL studies (Abbas et al., CoLLAs 2023).
    """

    def __init__(self, env: gym.Env, task_seed: int = 0) -> None:
        super().__init__(env, ActionPermutation(env.action_space), task_seed)


class FlipActions(TaskWrapper):
    """Per task, a random sign flip of each entry of a symmetric continuous action (cf. Abbas et al.)."""

    def __init__(self, env: gym.Env, task_seed: int = 0) -> None:
        super().__init__(env, ActionSignFlip(env.action_space), task_seed)


class ScaleReward(TaskWrapper):
    """Per task, the reward times a factor uniform in ``[low, high]``, negated with probability ``flip``.

    A change of the reward function under the same dynamics, the reward-reversal tasks of continual RL
    studies (e.g. Abbas et al., CoLLAs 2023).
    """

    def __init__(
        self, env: gym.Env, low: float = 1.0, high: float = 1.0, flip: float = 0.5, task_seed: int = 0
    ) -> None:
        super().__init__(env, RewardScale(low, high, flip), task_seed)


class DriftAttribute(TaskWrapper):
    """Per task, sets the numeric attribute ``name`` of ``env.unwrapped``, uniform (or log-uniform) in
    ``[low, high]``: physical-parameter drift (CartPole's ``gravity``, ``length``, ``masspole``; Pendulum's
    ``g``), the changing-dynamics setting of Dohare et al., Nature 2024. An env without a numeric ``name``
    is a ConfigError that lists its numeric attributes; CartPole's cached masses are recomputed.
    """

    def __init__(
        self, env: gym.Env, name: str, low: float, high: float, log_uniform: bool = False, task_seed: int = 0
    ) -> None:
        super().__init__(env, ParameterDrift(name, low, high, log_uniform), task_seed)


class TimeLimitAsTermination(gym.Wrapper):
    """An episode cut by the time limit ends as a termination: ``terminated = terminated or truncated`` and
    ``truncated = False``, so the learner does not bootstrap from V(s_T) there. What gym < 0.26 reported
    (one ``done`` flag) and what learners that read only it, such as Dohare et al.'s PPO, did."""

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, bool(terminated or truncated), False, info


def unbounded_actions(env: gym.Env) -> gym.Env:
    """``env`` with its Box action space widened to ± the dtype's largest finite value (Stable-Baselines3
    requires finite bounds), so a learner that clips actions to the space (SB3's PPO) passes its samples
    to ``env`` as they are (a MuJoCo env then clamps them to the motors' control range itself, and its
    control cost sees the sample)."""
    space = flat_box(env.action_space, "unbounded actions")
    largest = np.finfo(space.dtype).max
    unbounded = gym.spaces.Box(-largest, largest, shape=space.shape, dtype=space.dtype)
    return gym.wrappers.TransformAction(env, lambda action: action, unbounded)


def zero_padded(env: gym.Env, zeros: int) -> gym.Env:
    """``env`` whose flat observations end with ``zeros`` more entries, always 0."""
    space = flat_box(env.observation_space, "zero padding")
    padding = np.zeros(zeros, dtype=space.dtype)
    padded = gym.spaces.Box(-np.inf, np.inf, shape=(space.shape[0] + zeros,), dtype=space.dtype)
    return gym.wrappers.TransformObservation(env, lambda obs: np.concatenate([obs, padding]), padded)
