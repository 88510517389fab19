"""Training callbacks: the task clock, episode statistics and throughput, each logged to TensorBoard."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, ProgressBarCallback

from nested_ac.errors import ConfigError


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
        mark_switch(self, self.num_timesteps, task)

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


ANNOUNCED_TASK = "task"  # info key: the task the step just taken ran on (an integer)
ANNOUNCED_CHANGE = "task_changed"  # info key: true on the first step of a new task


def mark_switch(callback: BaseCallback, step: int, task: int) -> None:
    """Write ``task/switch`` (valued the new task) at ``step``, through the run's (checkpoint-deferred)
    outputs, not a dump, and tell an agent with ``notify_task_switch`` (its plasticity tools)."""
    for output in callback.logger.output_formats:
        output.write({"task/switch": task}, {"task/switch": None}, step)
    notify = getattr(callback.model, "notify_task_switch", None)
    if notify is not None:
        notify(task)


class AnnouncedTasks(BaseCallback):
    """Task phases from the env's own announcements, for an env that changes by itself.

    Each copy may put in the ``info`` of every step, from the first on, either ``info["task"]``, the integer
    task the step ran on, or ``info["task_changed"]``, true on the first step of a new task (the copy's tasks
    are then counted 0, 1, 2 …). Where no copy's first step (in a process: a resumed run's too) announces, the
    env is taken not to announce and later steps are not read, which keeps the callback off the per-step cost
    of every other run. A copy announces a change when its task differs from the one it announced before. The
    run's phase changes at the first vector step in which some copy announces a task other than the phase's:
    the new phase starts at the step before it (``num_timesteps − n_envs``), so an episode that ends in that
    vector step ran its last step on the new task and counts for the new phase, and one that ended before
    counts for the old: the same boundaries as :class:`TaskClock`'s for a world switched by a schedule after
    the same steps. Copies that follow later (their own change to the phase's task) start nothing. Like the
    clock it writes ``task/switch`` at each boundary, ``task/index`` every rollout, keeps ``switches`` and
    tells the agent's tools (``notify_task_switch``), one vector step after the change itself (it is seen in
    the info of the change's first step). The first announcement is the start: it notifies only where no
    ``clock`` did already.

    A schedule and an announcing env together are a ConfigError: the env says when its task changes, a
    ``clock`` that switches tasks (a non-stationary schedule) would make two task sequences. An env that
    declares ``announces_tasks = True`` gets this error before the run starts
    (:func:`nested_ac.envs.schedules.check_schedule_fits`); any other, at its first announcement.
    """

    def __init__(self, clock: TaskClock | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.task = -1
        self.switches: list[tuple[int, int]] = []
        self.announced: list[int] = []  # each copy's last announced task
        self.counts: list[int] = []  # each copy's changes flagged (task_changed)
        self.watching: bool | None = None  # whether the env announces; None until the first step

    @property
    def active(self) -> bool:
        """Whether the env has announced any task."""
        return bool(self.switches)

    def _announcements(self) -> tuple[list[int | None], bool]:
        """Each copy's announced task (None: it announced nothing), and whether any came as a flag."""
        infos = self.locals["infos"]
        if not self.counts:
            self.counts = [0] * len(infos)
        tasks: list[int | None] = []
        flagged = False
        for i, info in enumerate(infos):
            if ANNOUNCED_TASK in info:
                tasks.append(int(info[ANNOUNCED_TASK]))
            elif ANNOUNCED_CHANGE in info:
                self.counts[i] += bool(info[ANNOUNCED_CHANGE])
                tasks.append(self.counts[i])
                flagged = True
            else:
                tasks.append(None)
        return tasks, flagged

    def _check_no_schedule(self) -> None:
        if self.clock is not None and len(self.clock.switches) > 1:
            raise ConfigError(
                "the env announces its own tasks (info['task'] or info['task_changed']) and the schedule "
                "switched tasks too; use one: set env.schedule.every=0 (the env's announcements then give "
                "the tasks), or an env that does not announce"
            )

    def _on_step(self) -> bool:
        if self.watching is None:
            keys = (ANNOUNCED_TASK, ANNOUNCED_CHANGE)
            self.watching = any(key in info for info in self.locals["infos"] for key in keys)
        if not self.watching:
            return True
        tasks, flagged = self._announcements()
        if all(task is None for task in tasks):
            return True
        if not self.switches:  # the start: task 0 before the first flag, else the first task announced
            self._check_no_schedule()
            self.task = 0 if flagged else next(task for task in tasks if task is not None)
            self.announced = [self.task] * len(tasks)
            self.switches.append((0, self.task))
            if self.clock is None:
                mark_switch(self, 0, self.task)
        changed = [
            task
            for old, task in zip(self.announced, tasks, strict=True)
            if task is not None and task != old and task != self.task
        ]
        self.announced = [
            old if task is None else task for old, task in zip(self.announced, tasks, strict=True)
        ]
        if changed:
            self._check_no_schedule()
            self.task = changed[0]
            step = self.num_timesteps - self.training_env.num_envs
            if self.switches[-1][0] == step:  # copies that started on different tasks: the last one counts
                self.switches.pop()
            self.switches.append((step, self.task))
            mark_switch(self, step, self.task)
        return True

    def _on_rollout_end(self) -> None:
        if self.active:  # after the clock's, which it overrides
            self._check_no_schedule()
            self.logger.record("task/index", self.task)

    def state_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "switches": list(self.switches),
            "announced": list(self.announced),
            "counts": list(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task, self.switches = state["task"], [tuple(s) for s in state["switches"]]
        self.announced, self.counts = list(state["announced"]), list(state["counts"])


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
