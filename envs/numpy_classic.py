"""Gymnasium's classic-control tasks as numpy-vectorized environments with same-step autoreset.

Gymnasium ships a vector version of CartPole only; stepping Acrobot, Pendulum or the mountain cars one
copy at a time through SB3's ``DummyVecEnv`` costs a Python call per copy and step. Here every copy's
state is one row of an array and one step advances them all, with the dynamics, rewards, episode ends
and time limits of Gymnasium's ``Acrobot-v1``, ``Pendulum-v1``, ``MountainCar-v0`` and
``MountainCarContinuous-v0`` (``tests/test_numpy_classic.py`` checks them step for step against
Gymnasium's own environments). The physical constants are instance attributes under Gymnasium's names
(``LINK_MASS_1``, ``g``, ``force``, ``power`` ...), so :class:`~nested_ac.envs.effects.ParameterDrift`
changes them for every copy at once.

Autoreset is same-step (Gymnasium's ``AutoresetMode.SAME_STEP``): a finished copy starts its next
episode within the step, the returned observation is the new episode's first and the last one is in
``info["final_obs"]`` — what :class:`~nested_ac.envs.vector.GymnasiumVecEnv` hands to SB3.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space


class SameStepVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of a task in one state array ``(copies, state size)``, autoreset in the step.

    A subclass sets its spaces and defines ``_initial_states(count)``, ``_advance(actions)`` (moves
    ``self.state`` on by one step, returns ``(rewards, terminated)``) and ``_observe(states)``; this class
    counts episode steps, applies the time limit (``truncated`` when a copy reaches
    ``max_episode_steps``, as Gymnasium's ``TimeLimit``) and restarts finished copies.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int,
        max_episode_steps: int,
        single_observation_space: gym.spaces.Box,
        single_action_space: gym.spaces.Space,
    ) -> None:
        self.num_envs = int(num_envs)
        self.max_episode_steps = int(max_episode_steps)
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        self.action_space = batch_space(single_action_space, self.num_envs)
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.state = np.zeros((0, 0))

    def _initial_states(self, count: int) -> np.ndarray:
        raise NotImplementedError

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _observe(self, states: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.state = self._initial_states(self.num_envs)
        self.steps[:] = 0
        return self._observe(self.state), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        rewards, terminated = self._advance(np.asarray(actions))
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps
        observations = self._observe(self.state)
        info: dict[str, Any] = {}
        done = terminated | truncated
        if done.any():
            final = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                final[i] = observations[i].copy()
            info = {"final_obs": final, "_final_obs": done.copy()}
            self.state[done] = self._initial_states(int(done.sum()))
            self.steps[done] = 0
            observations[done] = self._observe(self.state[done])
        return observations, rewards.astype(np.float32), terminated, truncated, info


def _wrap(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Angles into [low, high] by whole turns, as Gymnasium's Acrobot does (subtract until ≤ high)."""
    turn = high - low
    x = x.copy()
    while (above := x > high).any():
        x[above] -= turn
    while (below := x < low).any():
        x[below] += turn
    return x


class AcrobotVectorEnv(SameStepVectorEnv):
    """Gymnasium's ``Acrobot-v1`` (Sutton 1996; Sutton & Barto 2018, the book's dynamics) for many copies.

    State (θ1, θ2, θ̇1, θ̇2); torque −1, 0 or +1 on the joint between the links; one step integrates the
    equations of motion over dt = 0.2 s with one classical Runge–Kutta (RK4) step, wraps the angles into
    [−π, π] and clips θ̇1 to ±4π, θ̇2 to ±9π. Reward −1 per step, 0 on the step the free end rises above
    the bar (−cos θ1 − cos(θ1 + θ2) > 1), which ends the episode; 500 steps at most.
    """

    dt = 0.2
    GRAVITY = 9.8

    def __init__(self, num_envs: int = 1, max_episode_steps: int = 500) -> None:
        self.LINK_LENGTH_1 = 1.0
        self.LINK_MASS_1 = 1.0
        self.LINK_MASS_2 = 1.0
        self.LINK_COM_POS_1 = 0.5
        self.LINK_COM_POS_2 = 0.5
        self.LINK_MOI = 1.0
        self.MAX_VEL_1 = 4 * math.pi
        self.MAX_VEL_2 = 9 * math.pi
        high = np.array([1.0, 1.0, 1.0, 1.0, self.MAX_VEL_1, self.MAX_VEL_2], dtype=np.float32)
        space = gym.spaces.Box(-high, high, dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, space, gym.spaces.Discrete(3))

    def _initial_states(self, count: int) -> np.ndarray:
        return self.np_random.uniform(-0.1, 0.1, size=(count, 4)).astype(np.float32).astype(np.float64)

    def _derivatives(self, s: np.ndarray, torque: np.ndarray) -> np.ndarray:
        m1, m2, l1 = self.LINK_MASS_1, self.LINK_MASS_2, self.LINK_LENGTH_1
        lc1, lc2, inertia, g = self.LINK_COM_POS_1, self.LINK_COM_POS_2, self.LINK_MOI, self.GRAVITY
        theta1, theta2, dtheta1, dtheta2 = s.T
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * np.cos(theta2)) + inertia + inertia
        d2 = m2 * (lc2**2 + l1 * lc2 * np.cos(theta2)) + inertia
        phi2 = m2 * lc2 * g * np.cos(theta1 + theta2 - math.pi / 2)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * np.sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * np.sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * np.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * np.sin(theta2) - phi2) / (
            m2 * lc2**2 + inertia - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack([dtheta1, dtheta2, ddtheta1, ddtheta2], axis=1)

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torque = actions.astype(np.float64) - 1.0  # actions 0, 1, 2 → torques −1, 0, +1
        s, h = self.state, self.dt
        k1 = self._derivatives(s, torque)
        k2 = self._derivatives(s + h / 2 * k1, torque)
        k3 = self._derivatives(s + h / 2 * k2, torque)
        k4 = self._derivatives(s + h * k3, torque)
        s = s + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        s[:, 0] = _wrap(s[:, 0], -math.pi, math.pi)
        s[:, 1] = _wrap(s[:, 1], -math.pi, math.pi)
        s[:, 2] = np.clip(s[:, 2], -self.MAX_VEL_1, self.MAX_VEL_1)
        s[:, 3] = np.clip(s[:, 3], -self.MAX_VEL_2, self.MAX_VEL_2)
        self.state = s
        terminated = -np.cos(s[:, 0]) - np.cos(s[:, 1] + s[:, 0]) > 1.0
        return np.where(terminated, 0.0, -1.0), terminated

    def _observe(self, states: np.ndarray) -> np.ndarray:
        theta1, theta2, dtheta1, dtheta2 = states.T
        return np.stack(
            [np.cos(theta1), np.sin(theta1), np.cos(theta2), np.sin(theta2), dtheta1, dtheta2], axis=1
        ).astype(np.float32)


class PendulumVectorEnv(SameStepVectorEnv):
    """Gymnasium's ``Pendulum-v1`` (the inverted-pendulum swing-up) for many copies.

    State (θ, θ̇), observation (cos θ, sin θ, θ̇); torque u clipped to ±2. One step (dt = 0.05):
    θ̇ ← clip(θ̇ + (3g/(2l)·sin θ + 3/(m·l²)·u)·dt, ±8), θ ← θ + θ̇·dt; reward −(θ_n² + 0.1·θ̇² + 0.001·u²)
    with θ_n the angle normalised into [−π, π) and θ̇ the velocity before the step. No terminal state;
    200 steps per episode. Starts uniform in θ ∈ [−π, π], θ̇ ∈ [−1, 1].
    """

    dt = 0.05
    max_speed = 8.0
    max_torque = 2.0

    def __init__(self, num_envs: int = 1, max_episode_steps: int = 200, g: float = 10.0) -> None:
        self.g, self.m, self.l = float(g), 1.0, 1.0
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        observations = gym.spaces.Box(-high, high, dtype=np.float32)
        actions = gym.spaces.Box(-self.max_torque, self.max_torque, shape=(1,), dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, observations, actions)

    def _initial_states(self, count: int) -> np.ndarray:
        return self.np_random.uniform([-math.pi, -1.0], [math.pi, 1.0], size=(count, 2))

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta, speed = self.state.T
        u = np.clip(actions.reshape(self.num_envs, -1)[:, 0], -self.max_torque, self.max_torque)
        normalised = (theta + math.pi) % (2 * math.pi) - math.pi
        costs = normalised**2 + 0.1 * speed**2 + 0.001 * u**2
        acceleration = 3 * self.g / (2 * self.l) * np.sin(theta) + 3.0 / (self.m * self.l**2) * u
        new_speed = np.clip(speed + acceleration * self.dt, -self.max_speed, self.max_speed)
        self.state = np.stack([theta + new_speed * self.dt, new_speed], axis=1)
        return -costs, np.zeros(self.num_envs, dtype=bool)

    def _observe(self, states: np.ndarray) -> np.ndarray:
        theta, speed = states.T
        return np.stack([np.cos(theta), np.sin(theta), speed], axis=1).astype(np.float32)


class _MountainCarBase(SameStepVectorEnv):
    """What both mountain cars share: the valley, the car's start and its clipped motion.

    State (position, velocity); the car starts at rest at a position uniform in [−0.6, −0.4]. One step:
    v ← clip(v + push − ``gravity``·cos(3·position), ±0.07), position ← clip(position + v, [−1.2, 0.6]),
    and v ← 0 where the car stands at the left wall moving left; the episode ends (terminated) once
    position ≥ ``goal_position`` with v ≥ 0.
    """

    min_position, max_position, max_speed = -1.2, 0.6, 0.07
    goal_position = 0.5

    def __init__(self, num_envs: int, max_episode_steps: int, actions: gym.spaces.Space) -> None:
        self.gravity = 0.0025
        low = np.array([self.min_position, -self.max_speed], dtype=np.float32)
        high = np.array([self.max_position, self.max_speed], dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, gym.spaces.Box(low, high, dtype=np.float32), actions)

    def _initial_states(self, count: int) -> np.ndarray:
        return np.stack([self.np_random.uniform(-0.6, -0.4, size=count), np.zeros(count)], axis=1)

    def _move(self, push: np.ndarray) -> np.ndarray:
        """Moves every car by ``push`` (the engine's change of velocity); returns which reached the goal."""
        position, velocity = self.state.T
        velocity = velocity + push - self.gravity * np.cos(3 * position)
        velocity = np.clip(velocity, -self.max_speed, self.max_speed)
        position = np.clip(position + velocity, self.min_position, self.max_position)
        velocity = np.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        self.state = np.stack([position, velocity], axis=1)
        return (position >= self.goal_position) & (velocity >= 0)

    def _observe(self, states: np.ndarray) -> np.ndarray:
        return states.astype(np.float32)


class MountainCarVectorEnv(_MountainCarBase):
    """Gymnasium's ``MountainCar-v0`` (Moore 1990; Sutton & Barto 2018) for many copies.

    Actions 0, 1, 2 push left, not at all, right: push = (action − 1)·``force`` (0.001); the goal is at
    0.5. Reward −1 per step; 200 steps at most.
    """

    def __init__(self, num_envs: int = 1, max_episode_steps: int = 200) -> None:
        self.force = 0.001
        super().__init__(num_envs, max_episode_steps, gym.spaces.Discrete(3))

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        terminated = self._move((actions.astype(np.float64) - 1) * self.force)
        return -np.ones(self.num_envs), terminated


class ContinuousMountainCarVectorEnv(_MountainCarBase):
    """Gymnasium's ``MountainCarContinuous-v0`` for many copies.

    A force a ∈ [−1, 1] pushes by a·``power`` (0.0015); the goal is at 0.45. Reward 100 on reaching it
    minus 0.1·a² every step (a as given); 999 steps at most. Gymnasium keeps this car's state in
    float32, so it is rounded to float32 after every step here too.
    """

    goal_position = 0.45

    def __init__(self, num_envs: int = 1, max_episode_steps: int = 999) -> None:
        self.power = 0.0015
        actions = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        super().__init__(num_envs, max_episode_steps, actions)

    def _advance(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        action = actions.reshape(self.num_envs, -1)[:, 0].astype(np.float64)
        terminated = self._move(np.clip(action, -1.0, 1.0) * self.power)
        self.state = self.state.astype(np.float32).astype(np.float64)
        return 100.0 * terminated - 0.1 * action**2, terminated
