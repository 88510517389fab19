"""ContinualPPO calls each plasticity tool's hooks at the promised moments."""

from __future__ import annotations

from collections import Counter

from stable_baselines3.common.env_util import make_vec_env

from nested_ac import envs
from nested_ac.agents import ContinualPPO
from nested_ac.callbacks import TaskClock
from nested_ac.hooks import Tool


class CountingTool(Tool):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.tasks: list[int] = []

    def after_optimizer_step(self, model, optimizer) -> None:
        assert optimizer is model.policy.optimizer
        self.calls["step"] += 1

    def on_task_switch(self, model, optimizer, task) -> None:
        self.tasks.append(task)

    def on_rollout_end(self, model) -> None:
        self.calls["rollout"] += 1

    def log(self, logger) -> None:
        self.calls["log"] += 1


def test_hooks_are_called_at_each_step_switch_rollout_and_update(tmp_path):
    env = make_vec_env("nested_ac/PermutedCartPole-v0", n_envs=2, seed=0)
    tool = CountingTool()
    agent = ContinualPPO("MlpPolicy", env, tools=[tool], n_steps=128, batch_size=64, n_epochs=3, seed=0)
    agent.learn(total_timesteps=512, callback=TaskClock(envs.EveryNSteps(256)))
    # 2 rollouts of 2 x 128 steps; each update: 3 epochs x (256 / 64) minibatches = 12 optimizer steps.
    assert tool.calls == Counter(step=24, rollout=2, log=2)
    assert tool.tasks == [0, 1, 2]  # task 2 begins at step 512, the last step
    agent.save(tmp_path / "model.zip")
    loaded = ContinualPPO.load(tmp_path / "model.zip")
    assert loaded.tools == []
