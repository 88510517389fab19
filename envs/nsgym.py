"""NS-Gym's non-stationary environments as nested-ac plug-ins: :func:`from_ns_gym`.

NS-Gym (Keplinger et al., "NS-Gym: Open-Source Simulation Environments and Benchmarks for Non-Stationary
Markov Decision Processes", NeurIPS 2025 Datasets and Benchmarks; the ``ns-gym`` package) wraps a Gymnasium
env in an ``NSWrapper`` that changes physical parameters: each tunable parameter has an update function
(``IncrementUpdate``, ``RandomWalk`` …) that a scheduler fires at NS-Gym's time ``t``; the wrapper returns the
observation ``{"state", "env_change", "delta_change", "relative_time"}`` and, in ``info["Ground Truth Env
Change"]``, a 0/1 flag per parameter that is 1 on the step whose dynamics ran with the new value.

nested-ac is installed with ns-gym 1.0.12 without its dependencies (``pip install --no-deps
ns-gym==1.0.12``, as ``scripts/setup.sh`` does): ns-gym declares ``mujoco<3.4`` (and
``stable_baselines3[extra]``, ``pygame``) while the lock has mujoco 4.0.0; the classic-control wrapper imports
and runs with the locked packages (``tests/test_nsgym.py``), NS-Gym's MuJoCo wrapper is not checked here.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from nested_ac.callbacks import ANNOUNCED_CHANGE
from nested_ac.envs.classic import CLASSIC_TASKS

NS_GYM_CHANGE = "Ground Truth Env Change"  # NS-Gym's info key: {parameter: 0 or 1} at each step
CLOCKS = ("run", "episode")


class NSGymAdapter(gym.Wrapper):
    """An NS-Gym env as a nested-ac world that announces its own changes (``announces_tasks``), so the
    trainer segments the continual metrics by them (:class:`nested_ac.callbacks.AnnouncedTasks`).

    - The policy gets NS-Gym's ``state`` alone (the observation space is the base env's): the change flags
      and ``relative_time`` are not shown to the agent.
    - A step on which any of NS-Gym's ground-truth flags is 1 is the first step of a new task:
      ``info["task_changed"]`` is true there (:class:`nested_ac.callbacks.AnnouncedTasks` turns it into a
      task boundary); a change on a copy's very first step is its start, not a change.
    - ``clock="run"`` (the default): NS-Gym's time ``t``, which its schedulers read and which it resets to 0
      at each reset, is set back after each reset to the number of steps the copy has taken in the run, so
      ``PeriodicScheduler(period=P)`` changes the world every P of the copy's steps across episodes, a
      continual-learning world; it needs ``persistent_params=True`` (else NS-Gym puts the parameters back at
      each reset). ``clock="episode"``: NS-Gym's own per-episode time.
    - ``seed``: the run seed (the ``task_seed`` an entry point receives). After each explicitly seeded reset
      (the first, from the trainer, with the seed of the copy) every update function that has a generator
      is reseeded through its ``seed()`` method with the k-th child of ``np.random.SeedSequence(seed)``, the
      seeds NS-Gym's own ``reset(seed=seed)`` gives them, and every scheduler that has one (``rng``) with
      ``default_rng([seed, k])``: every copy draws the same parameter sequence, and another run seed
      another; the base env keeps the copy's own reset seed. None: NS-Gym's own seeding.
    - ``announce=False``: no task boundaries, for a world that changes at (nearly) every step, as under
      NS-Gym's ``ContinuousScheduler``: per-task metrics are then meaningless; give the run
      ``metrics.window`` instead (windowed metrics: docs/metrics-and-reports.md).
    - ``return_floor``: the base task's, where nested-ac knows it (Acrobot −500, Pendulum ≈ −3255,
      MountainCar −200, MountainCarContinuous −99.9; None for CartPole, whose returns are ≥ 0).
    """

    def __init__(
        self, env: gym.Env, seed: int | None = None, clock: str = "run", announce: bool = True
    ) -> None:
        if not hasattr(env, "tunable_params") or not isinstance(env.observation_space, gym.spaces.Dict):
            raise TypeError(
                f"from_ns_gym needs an NS-Gym wrapper (ns_gym.wrappers.*), got {type(env).__name__}"
            )
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        if clock == "run" and not env.persistent_params:
            raise ValueError(
                "clock='run' needs the NS-Gym wrapper built with persistent_params=True: without it NS-Gym "
                "puts every parameter back to its initial value at each reset; or use clock='episode'"
            )
        super().__init__(env)
        self.observation_space = env.observation_space["state"]
        self.run_seed, self.clock, self.steps = seed, clock, 0
        self.announces_tasks = announce
        base = env.unwrapped.spec.id if env.unwrapped.spec is not None else None
        floors = {task.base_id: task.return_floor for task in CLASSIC_TASKS}
        self.return_floor = floors.get(base)

    def _reseed(self) -> None:
        children = np.random.SeedSequence(self.run_seed).spawn(len(self.env.tunable_params))
        for k, (child, update) in enumerate(zip(children, self.env.tunable_params.values(), strict=True)):
            update.seed(child)
            if hasattr(update.scheduler, "rng"):
                update.scheduler.rng = np.random.default_rng([self.run_seed, k])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None and self.run_seed is not None:
            self._reseed()
        if self.clock == "run":
            self.env.t = self.steps
        return obs["state"], info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.announces_tasks:
            info[ANNOUNCED_CHANGE] = any(info.get(NS_GYM_CHANGE, {}).values()) and self.steps > 0
        self.steps += 1
        return obs["state"], reward, terminated, truncated, info


def from_ns_gym(
    env: gym.Env, seed: int | None = None, clock: str = "run", announce: bool = True
) -> NSGymAdapter:
    """``env`` (an NS-Gym wrapper) as a nested-ac world: :class:`NSGymAdapter`."""
    return NSGymAdapter(env, seed, clock, announce)
