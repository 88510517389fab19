"""The permuted CartPole and the task clock that switches every copy at the same global step."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env

from nested_ac import envs
from nested_ac.agents import ContinualPPO
from nested_ac.callbacks import TaskClock
from nested_ac.errors import ConfigError


def observations(env: gym.Env, task: int, seed: int = 0) -> np.ndarray:
    env.get_wrapper_attr("set_task")(task)
    first, _ = env.reset(seed=seed)
    return first


def test_permutation_changes_only_with_the_task_and_is_seeded():
    env = gym.make("nested_ac/PermutedCartPole-v0", task_seed=7)
    plain = gym.make("CartPole-v1")
    raw, _ = plain.reset(seed=1)
    seen = {}
    for task in (0, 1, 2, 0):
        obs = observations(env, task, seed=1)
        effect = env.get_wrapper_attr("effect")
        wrapper = effect.permutation, effect.signs
        np.testing.assert_allclose(obs, wrapper[1] * raw[wrapper[0]], rtol=1e-6)
        assert sorted(np.abs(obs)) == pytest.approx(sorted(np.abs(raw)))  # same entries, moved and flipped
        seen.setdefault(task, obs)
        np.testing.assert_array_equal(seen[task], obs)  # a task always means the same world
    assert not np.array_equal(seen[0], seen[1]) or not np.array_equal(seen[1], seen[2])
    again = gym.make("nested_ac/PermutedCartPole-v0", task_seed=7)
    np.testing.assert_array_equal(observations(again, 2, seed=1), seen[2])
    other_seed = gym.make("nested_ac/PermutedCartPole-v0", task_seed=8)
    perms = {tuple(observations(other_seed, task, seed=1)) for task in range(4)}
    assert perms != {tuple(seen[task]) for task in range(3)}


def test_observation_within_space_for_every_task():
    env = gym.make("nested_ac/PermutedCartPole-v0")
    for task in range(5):
        env.get_wrapper_attr("set_task")(task)
        obs, _ = env.reset(seed=task)
        for _ in range(20):
            assert env.observation_space.contains(obs)
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()


def test_negative_task_is_rejected():
    env = gym.make("nested_ac/PermutedCartPole-v0")
    with pytest.raises(ConfigError, match="non-negative"):
        env.get_wrapper_attr("set_task")(-1)


class RecordTasks(TaskClock):
    """The task clock, recording every copy's task after each step."""

    def __init__(self, schedule):
        super().__init__(schedule)
        self.per_copy: list[tuple[int, list[int]]] = []

    def _on_step(self) -> bool:
        result = super()._on_step()
        self.per_copy.append((self.num_timesteps, self.training_env.get_attr("task")))
        return result


def test_all_copies_switch_at_the_same_global_step():
    vec_env = make_vec_env("nested_ac/PermutedCartPole-v0", n_envs=4, seed=0, env_kwargs={"task_seed": 0})
    agent = ContinualPPO("MlpPolicy", vec_env, n_steps=64, batch_size=64, n_epochs=1, seed=0)
    clock = RecordTasks(envs.EveryNSteps(300))
    agent.learn(total_timesteps=1024, callback=clock)
    for step, tasks in clock.per_copy:
        assert tasks == [step // 300] * 4
    # Switches happen at the first global step (a multiple of n_envs = 4) at or past each boundary.
    assert clock.switches == [(0, 0), (300, 1), (600, 2), (900, 3)]


def test_schedule_every_zero_is_stationary():
    schedule = envs.EveryNSteps(0)
    assert {schedule.task_at(step) for step in range(0, 10**7, 10**5)} == {0}
    assert envs.EveryNSteps(100).task_at(250) == 2
