"""Training callbacks: the task clock, episode statistics and throughput, each logged to TensorBoard."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback


class Schedule(Protocol):
    def task_at(self, step: int) -> int: ...


class TaskClock(BaseCallback):
    """Applies the schedule: switches every parallel copy to the scheduled task at the same global step.

    The global step counts environment steps summed over the copies (SB3's ``num_timesteps``). Tells an
    agent with ``notify_task_switch`` (``ContinualPPO``: its plasticity tools) after each switch. Logs
    ``task/index`` every rollout and keeps ``switches``, the ``(step, task)`` list of every change.
    """

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.task = -1
        self.switches: list[tuple[int, int]] = []

    def _switch_to(self, task: int) -> None:
        self.training_env.env_method("set_task", task)
        self.task = task
        self.switches.append((self.num_timesteps, task))
        notify = getattr(self.model, "notify_task_switch", None)
        if notify is not None:
            notify(task)

    def _on_training_start(self) -> None:
        task = self.schedule.task_at(self.model.num_timesteps)
        if task != self.task:  # a resumed run is already on its task
            self._switch_to(task)

    def _on_step(self) -> bool:
        task = self.schedule.task_at(self.num_timesteps)
        if task != self.task:
            self._switch_to(task)
        return True

    def _on_rollout_end(self) -> None:
        self.logger.record("task/index", self.task)

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task, "switches": list(self.switches)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task, self.switches = state["task"], list(state["switches"])


class EpisodeStats(BaseCallback):
    """Logs the mean return and length of the episodes that ended during each rollout, unsmoothed.

    SB3's ``rollout/ep_rew_mean`` averages the last 100 episodes, which blurs a task switch; this logs
    ``episode/return``, ``episode/length`` and ``episode/count`` per rollout and keeps every episode's
    ``(end step, return, length)`` in ``episodes``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[tuple[int, float, int]] = []
        self._rollout_start = 0

    def _on_rollout_start(self) -> None:
        self._rollout_start = len(self.episodes)

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is not None:
                self.episodes.append((self.num_timesteps, float(episode["r"]), int(episode["l"])))
        return True

    def _on_rollout_end(self) -> None:
        finished = self.episodes[self._rollout_start :]
        if finished:
            _, returns, lengths = zip(*finished, strict=True)
            self.logger.record("episode/return", float(np.mean(returns)))
            self.logger.record("episode/length", float(np.mean(lengths)))
        self.logger.record("episode/count", len(finished))

    def state_dict(self) -> dict[str, Any]:
        return {"episodes": list(self.episodes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes = list(state["episodes"])


class Throughput(BaseCallback):
    """Logs ``time/sps``: environment steps per second over the last rollout and update, wall clock."""

    def __init__(self) -> None:
        super().__init__()
        self._last_time = 0.0
        self._last_steps = 0

    def _on_training_start(self) -> None:
        self._last_time, self._last_steps = time.perf_counter(), self.model.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        if now > self._last_time:
            self.logger.record("time/sps", (self.num_timesteps - self._last_steps) / (now - self._last_time))
        self._last_time, self._last_steps = now, self.num_timesteps
