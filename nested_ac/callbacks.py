"""Training callbacks: the task clock, episode statistics and throughput, each logged to TensorBoard."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback


class TaskAtStep(Protocol):
    """What the task clock needs of a schedule (:mod:`nested_ac.envs.schedules`): the task at a step."""

    def task_at(self, step: int) -> int: ...


class TaskClock(BaseCallback):
    """Applies the schedule: switches every parallel copy to the scheduled task at the same global step.

    The global step counts environment steps summed over the copies (SB3's ``num_timesteps``). With
    ``at_episode_boundary`` each copy switches when its current episode ends instead (the first switch,
    at the start, is immediate). ``since_last_switch`` (with ``at_episode_boundary`` and a periodic
    schedule, one with ``every``): the schedule's phases are counted from switch to switch, not from the
    start — with steps numbered s = 0, 1, … (the step just taken is ``num_timesteps − 1``) and the start a
    switch at s = 0, phase k + 1 (the schedule's task at step (k + 1)·every) starts at the first step s that
    ends an episode with s − s_last > every, s_last the step of the previous switch, and each copy switches
    there or at its own next episode end: Dohare et al.'s SlipperyAnt rule, exactly so with one copy.
    Tells an agent with ``notify_task_switch`` (``ContinualPPO``: its
    plasticity tools) at each scheduled switch. Logs ``task/index`` and the task's physical parameters
    (``task/<name>``, e.g. ``task/friction``) every rollout, and ``task/switch`` (valued the new task) at
    the exact step of each switch; keeps ``switches``, the ``(step, task)`` list of every change. No task
    starts at or after step ``end`` (the run's budget): PPO's last rollout may run past it, and those steps
    stay on the last task the run measures.
    """

    def __init__(
        self,
        schedule: TaskAtStep,
        at_episode_boundary: bool = False,
        end: int | None = None,
        since_last_switch: bool = False,
    ) -> None:
        super().__init__()
        self.schedule = schedule
        self.at_episode_boundary = at_episode_boundary
        self.end = end
        self.since_last_switch = since_last_switch
        self.task = -1
        self.switches: list[tuple[int, int]] = []
        self.pending: set[int] = set()  # copies still on the previous task (episode-boundary mode)
        self.phase = 0  # since_last_switch: the schedule's phase now, and the step s of its switch
        self.last_switch = 0

    def _switch_to(self, task: int, now: bool) -> None:
        if now:
            self.training_env.env_method("set_task", task)
            self.pending = set()
        else:
            self.pending = set(range(self.training_env.num_envs))
        self.task = task
        self.switches.append((self.num_timesteps, task))
        # One point at the switch step, through the run's (checkpoint-deferred) outputs, not a dump.
        for output in self.logger.output_formats:
            output.write({"task/switch": task}, {"task/switch": None}, self.num_timesteps)
        notify = getattr(self.model, "notify_task_switch", None)
        if notify is not None:
            notify(task)

    def _scheduled_task(self) -> int:
        """The task the schedule sets at the current step (counted from switch to switch, the task of the
        current phase); the current one from step ``end`` on."""
        step = self.model.num_timesteps
        if self.end is not None and step >= self.end and self.task >= 0:
            return self.task
        if self.since_last_switch:
            return self.schedule.task_at(self.phase * self.schedule.every)
        return self.schedule.task_at(step)

    def _on_training_start(self) -> None:
        task = self._scheduled_task()
        if task != self.task:  # a resumed run is already on its task
            self._switch_to(task, now=True)

    def _on_step(self) -> bool:
        if self.since_last_switch:
            step = self.num_timesteps - 1
            every = self.schedule.every
            if every > 0 and step - self.last_switch > every and any(self.locals["dones"]):
                self.phase, self.last_switch = self.phase + 1, step
        task = self._scheduled_task()
        if task != self.task:
            self._switch_to(task, now=not self.at_episode_boundary)
        if self.pending:
            ended = [i for i in sorted(self.pending) if self.locals["dones"][i]]
            if ended:
                self.training_env.env_method("set_task", self.task, indices=ended)
                self.pending.difference_update(ended)
        return True

    def _on_rollout_end(self) -> None:
        self.logger.record("task/index", self.task)
        if self.training_env.has_attr("task_parameters"):
            for name, value in self.training_env.get_attr("task_parameters", indices=[0])[0].items():
                self.logger.record(f"task/{name}", value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "switches": list(self.switches),
            "pending": sorted(self.pending),
            "phase": self.phase,
            "last_switch": self.last_switch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task, self.switches = state["task"], list(state["switches"])
        self.pending = set(state.get("pending", []))
        self.phase, self.last_switch = state.get("phase", 0), state.get("last_switch", 0)


class EpisodeStats(BaseCallback):
    """Logs the mean return and length of the episodes that ended during each rollout, unsmoothed.

    SB3's ``rollout/ep_rew_mean`` averages the last 100 episodes, which blurs a task switch; this logs
    ``episode/return`` (and its band, ``episode/return_min`` and ``…_max``), ``episode/length`` and
    ``episode/count`` per rollout and keeps every episode's
    ``(end step, return, length)`` in ``episodes``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[tuple[int, float, int]] = []
        self._rollout_start = 0

    def _on_rollout_start(self) -> None:
        self._rollout_start = len(self.episodes)

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        for i in np.flatnonzero(self.locals["dones"]):  # an episode's record comes with its last step
            episode = infos[i].get("episode")
            if episode is not None:
                self.episodes.append((self.num_timesteps, float(episode["r"]), int(episode["l"])))
        return True

    def _on_rollout_end(self) -> None:
        finished = self.episodes[self._rollout_start :]
        if finished:
            _, returns, lengths = zip(*finished, strict=True)
            self.logger.record("episode/return", float(np.mean(returns)))
            self.logger.record("episode/return_min", float(np.min(returns)))
            self.logger.record("episode/return_max", float(np.max(returns)))
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


class ProgressBar(ProgressBarCallback):
    """SB3's progress bar, stopped at its total: PPO trains whole rollouts, so the last one may run past the
    step budget (e.g. 301,056 of 300,000), which the bar does not count; the run's result tells the steps
    actually trained."""

    def _on_step(self) -> bool:
        self.pbar.update(min(self.training_env.num_envs, self.pbar.total - self.pbar.n))
        return True
