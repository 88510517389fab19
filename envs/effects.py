"""What one task changes, written once for a single environment and for a batch of copies.

A :class:`TaskEffect` holds the per-task state of one kind of non-stationarity (a permutation, an offset,
a reward scale, a physical parameter) and applies it to arrays whose last axis is the entity it changes,
so the same code serves one observation ``(n,)`` and a batch ``(copies, n)``. The wrappers in
:mod:`nested_ac.envs.wrappers` (one environment) and
:class:`~nested_ac.envs.wrappers.VectorTaskWrapper` (a Gymnasium vector environment)
call these methods; neither holds any transform logic of its own.
"""

from __future__ import annotations

import numbers
from typing import Any

import gymnasium as gym
import numpy as np

from nested_ac.errors import ConfigError


class TaskEffect:
    """One concern of a task; each subclass overrides ``draw`` and the one hook it changes."""

    def draw(self, rng: np.random.Generator) -> None:
        """Draw this effect's state for a task from ``rng`` (seeded by the task seed and the task)."""
        raise NotImplementedError

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation

    def action(self, action: np.ndarray) -> np.ndarray:
        return action

    def reward(self, reward: Any) -> Any:
        return reward

    def apply(self, unwrapped: Any) -> None:
        """Change the simulator (``env.unwrapped``) for the drawn task."""

    def observation_space(self, space: gym.spaces.Space) -> gym.spaces.Space:
        """The observation space once this effect applies (its union over every task)."""
        return space

    def parameters(self) -> dict[str, float]:
        """The current task's physical parameters, logged as ``task/<name>``."""
        return {}


def flat_box(space: gym.spaces.Space, what: str) -> gym.spaces.Box:
    """``space`` if it is a flat Box; a ConfigError saying that ``what`` needs one otherwise."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ConfigError(f"{what} needs a flat Box space, got {space}")
    return space


class ObservationPermutation(TaskEffect):
    """``obs'[i] = sign[i]·obs[perm[i]]``: a random permutation and sign flip of the entries per task."""

    def __init__(self, space: gym.spaces.Space) -> None:
        self.size = flat_box(space, "observation permutation").shape[0]

    def draw(self, rng: np.random.Generator) -> None:
        self.permutation = rng.permutation(self.size)
        self.signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=self.size)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return (self.signs * observation[..., self.permutation]).astype(observation.dtype, copy=False)

    def observation_space(self, space: gym.spaces.Space) -> gym.spaces.Box:
        bound = np.maximum(np.abs(space.low), np.abs(space.high)).max()
        return gym.spaces.Box(-bound, bound, shape=space.shape, dtype=space.dtype)


class ObservationOffset(TaskEffect):
    """``obs' = obs + offset`` with ``offset`` uniform in ``[-scale, scale]`` per entry, fixed per task."""

    def __init__(self, space: gym.spaces.Space, scale: float) -> None:
        self.size = flat_box(space, "observation offset").shape[0]
        self.scale = float(scale)

    def draw(self, rng: np.random.Generator) -> None:
        self.offset = rng.uniform(-self.scale, self.scale, size=self.size).astype(np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return (observation + self.offset).astype(observation.dtype, copy=False)

    def observation_space(self, space: gym.spaces.Space) -> gym.spaces.Box:
        return gym.spaces.Box(space.low - self.scale, space.high + self.scale, dtype=space.dtype)


class ActionPermutation(TaskEffect):
    """A Discrete action ``a`` is executed as ``perm[a]``, a random permutation of the actions per task."""

    def __init__(self, space: gym.spaces.Space) -> None:
        if not isinstance(space, gym.spaces.Discrete):
            raise ConfigError(f"action permutation needs a Discrete action space, got {space}")
        self.n, self.start = int(space.n), int(space.start)

    def draw(self, rng: np.random.Generator) -> None:
        self.permutation = rng.permutation(self.n) + self.start

    def action(self, action: np.ndarray) -> np.ndarray:
        return self.permutation[np.asarray(action) - self.start]


class ActionSignFlip(TaskEffect):
    """A continuous action's entries are multiplied by a random sign per entry and task."""

    def __init__(self, space: gym.spaces.Space) -> None:
        box = flat_box(space, "action sign flip")
        if not np.allclose(box.low, -box.high):
            raise ConfigError(f"action sign flip needs an action box symmetric about 0, got {box}")
        self.size = box.shape[0]

    def draw(self, rng: np.random.Generator) -> None:
        self.signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=self.size)

    def action(self, action: np.ndarray) -> np.ndarray:
        return (self.signs * action).astype(np.asarray(action).dtype, copy=False)


class RewardScale(TaskEffect):
    """``r' = scale·r``: ``scale`` uniform in ``[low, high]`` per task, negated with probability ``flip``."""

    def __init__(self, low: float = 1.0, high: float = 1.0, flip: float = 0.5) -> None:
        if not 0 <= flip <= 1 or low > high:
            raise ConfigError(f"reward scale needs low <= high and flip in [0, 1], got {low}, {high}, {flip}")
        self.low, self.high, self.flip = float(low), float(high), float(flip)

    def draw(self, rng: np.random.Generator) -> None:
        sign = -1.0 if rng.random() < self.flip else 1.0
        self.scale = sign * rng.uniform(self.low, self.high)

    def reward(self, reward: Any) -> Any:
        return reward * self.scale

    def parameters(self) -> dict[str, float]:
        return {"reward_scale": float(self.scale)}


def numeric_attributes(unwrapped: Any) -> list[str]:
    """The public numeric (int or float, not bool) attributes of an environment, instance and class."""
    names = []
    for name in dir(unwrapped):
        if name.startswith("_"):
            continue
        value = getattr(unwrapped, name, None)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            names.append(name)
    return names


def _cartpole_cache(unwrapped: Any) -> None:
    """CartPole caches ``total_mass`` and ``polemass_length``; recompute them after a drift."""
    unwrapped.total_mass = unwrapped.masspole + unwrapped.masscart
    unwrapped.polemass_length = unwrapped.masspole * unwrapped.length


# Attributes derived from drifted ones, per environment: (attributes that mark it, how to recompute them).
DERIVED = ((("total_mass", "polemass_length", "masspole", "masscart", "length"), _cartpole_cache),)


class ParameterDrift(TaskEffect):
    """Sets a physical parameter per task, uniform (or log-uniform) in ``[low, high]``.

    The base class sets the numeric attribute ``name`` of ``env.unwrapped`` (CartPole's ``gravity``,
    Pendulum's ``g``, Acrobot's ``LINK_MASS_1`` ...) and recomputes what the env derives from it
    (CartPole: ``total_mass``, ``polemass_length``); subclasses write into a simulator's model instead.
    """

    def __init__(self, name: str, low: float, high: float, log_uniform: bool = False) -> None:
        valid = 0 < low <= high if log_uniform else low <= high
        if not valid:
            raise ConfigError(
                f"drift of {name!r} needs low <= high (> 0 if log-uniform), got [{low}, {high}]"
            )
        self.name, self.low, self.high, self.log_uniform = name, float(low), float(high), log_uniform

    def check(self, unwrapped: Any) -> None:
        """A ConfigError listing the env's numeric attributes if it has no numeric ``name``."""
        if self.name not in numeric_attributes(unwrapped):
            raise ConfigError(
                f"{type(unwrapped).__name__} has no numeric attribute {self.name!r} to drift; "
                f"its numeric attributes: {', '.join(numeric_attributes(unwrapped))}"
            )

    def draw(self, rng: np.random.Generator) -> None:
        if self.log_uniform:
            self.value = float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        else:
            self.value = float(rng.uniform(self.low, self.high))

    def apply(self, unwrapped: Any) -> None:
        setattr(unwrapped, self.name, self.value)
        for marks, recompute in DERIVED:
            if self.name in marks and all(hasattr(unwrapped, mark) for mark in marks):
                recompute(unwrapped)

    def parameters(self) -> dict[str, float]:
        return {self.name: self.value}


class FrictionDrift(ParameterDrift):
    """Sets the sliding friction of every geom of a MuJoCo model (``model.geom_friction[:, 0]``).

    MuJoCo uses the larger of two touching geoms' frictions for a contact, so setting only the floor would
    leave the feet's friction (1.0 in Ant) in charge; setting every geom makes the contact friction equal
    the drawn value.
    """

    def __init__(self, low: float, high: float, log_uniform: bool = True) -> None:
        super().__init__("friction", low, high, log_uniform)

    def check(self, unwrapped: Any) -> None:
        if not hasattr(unwrapped, "model") or not hasattr(unwrapped.model, "geom_friction"):
            raise ConfigError(f"{type(unwrapped).__name__} is not a MuJoCo env (no model.geom_friction)")

    def apply(self, unwrapped: Any) -> None:
        unwrapped.model.geom_friction[:, 0] = self.value


class MassScale(ParameterDrift):
    """Multiplies every body's mass in a MuJoCo model by a factor drawn per task (from the original)."""

    def __init__(self, low: float, high: float, log_uniform: bool = True) -> None:
        super().__init__("mass_scale", low, high, log_uniform)
        self.original: np.ndarray | None = None

    def check(self, unwrapped: Any) -> None:
        if not hasattr(unwrapped, "model") or not hasattr(unwrapped.model, "body_mass"):
            raise ConfigError(f"{type(unwrapped).__name__} is not a MuJoCo env (no model.body_mass)")

    def apply(self, unwrapped: Any) -> None:
        if self.original is None:
            self.original = unwrapped.model.body_mass.copy()
        unwrapped.model.body_mass[:] = self.original * self.value
