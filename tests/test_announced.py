"""Worlds that change on their own: tasks an env announces, and windows for drift (ALGORITHMS.md §8)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from nested_ac import continual
from nested_ac.config import resolve_config
from nested_ac.errors import ConfigError
from nested_ac.train import train
from tests.conftest import FAST, read_scalars

EVERY = 512  # each copy's own steps per task
COPIES = 2


class SelfSwitching(gym.Wrapper):
    """Permuted CartPole that moves itself to the next task after every ``EVERY`` of its own steps and says
    so in ``info["task"]`` (the task the step ran on); no trainer schedule involved."""

    def __init__(self, task_seed: int = 0, flag: bool = False) -> None:
        super().__init__(gym.make("nested_ac/PermutedCartPole-v0", task_seed=task_seed))
        self.steps, self.task, self.flag = 0, 0, flag

    def step(self, action):
        if self.steps and self.steps % EVERY == 0:  # the switch comes before the step, as the clock's does
            self.task += 1
            self.env.get_wrapper_attr("set_task")(self.task)
        self.steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.flag:
            info["task_changed"] = self.steps > 1 and self.steps % EVERY == 1
        else:
            info["task"] = self.task
        return obs, reward, terminated, truncated, info


class Declared(SelfSwitching):
    announces_tasks = True


for name, entry in (("SelfSwitching-v0", SelfSwitching), ("DeclaredSwitching-v0", Declared)):
    if name not in gym.envs.registry:  # the CLI imports this module once more by name
        gym.register(name, entry_point=entry)


def _config(tmp_path, name: str, env_id: str, *assignments: str):
    overrides = {"env.id": env_id, "steps": 4 * EVERY * COPIES, "env.n_envs": COPIES}
    overrides |= {"run_dir": str(tmp_path), "name": name}
    sets = [item for item in FAST if "=" in item and not item.startswith("-")]
    return resolve_config(None, overrides | {"progress_bar": False}, [*sets, *assignments])


def test_an_env_that_switches_itself_gets_the_scheduled_worlds_R_k(tmp_path):
    """The same world, switched by a schedule after the same steps: the same phases and R_k, bit for bit;
    the announced run also marks its switches in TensorBoard."""
    scheduled = train(
        _config(
            tmp_path,
            "scheduled",
            "nested_ac/PermutedCartPole-v0",
            f"env.schedule.every={EVERY * COPIES}",
            "env.vectorized=false",
        )
    )
    announced = train(_config(tmp_path, "announced", "tests.test_announced:SelfSwitching-v0"))
    flagged = train(_config(tmp_path, "flagged", "tests.test_announced:SelfSwitching-v0", "env.kwargs={flag: true}"))
    assert len(scheduled.summary["R"]) == 4 and None not in scheduled.summary["R"]
    for result in (announced, flagged):
        assert result.switches == scheduled.switches
        assert result.summary["phases"] == scheduled.summary["phases"]
        assert result.summary["R"] == scheduled.summary["R"]
        assert result.summary["P_late"] == scheduled.summary["P_late"]
    marks = read_scalars(announced.run_dir)["task/switch"]
    assert [(step, int(value)) for step, value in marks] == [(k * EVERY * COPIES, k) for k in range(4)]


def test_a_schedule_and_a_declared_announcing_env_are_refused_before_anything_is_written(tmp_path):
    config = _config(tmp_path, "both", "tests.test_announced:DeclaredSwitching-v0", "env.schedule.every=2048")
    with pytest.raises(ConfigError, match="announces its own tasks"):
        train(config)
    assert not (tmp_path / "both").exists()


def test_a_schedule_and_an_undeclared_announcing_env_stop_with_a_config_error(tmp_path):
    config = _config(tmp_path, "both", "tests.test_announced:SelfSwitching-v0", "env.schedule.every=2048")
    with pytest.raises(ConfigError, match="the schedule switched tasks too"):
        train(config)
