"""Task schedules: a map from the global environment step (summed over parallel copies) to a task.

Every schedule is a pure function of the step (and, for :class:`RandomDraw`, the run seed), so a resumed
run and every parallel copy agree on the task without any state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EveryNSteps:
    """A new task every ``every`` global steps: task = step // every; ``every = 0`` never switches."""

    every: int

    def task_at(self, step: int) -> int:
        return step // self.every if self.every > 0 else 0

    def tasks_before(self, steps: int) -> set[int]:
        return {0, self.task_at(max(steps - 1, 0))}

    def describe(self) -> str:
        return f"new task every {self.every:,} steps" if self.every > 0 else "stationary"


@dataclass(frozen=True)
class Cyclic:
    """Cycles through ``tasks`` (A, B, A, B …), ``every`` steps each: recurring tasks measure forgetting."""

    every: int
    tasks: tuple[int, ...]

    def task_at(self, step: int) -> int:
        return self.tasks[(step // self.every) % len(self.tasks)]

    def tasks_before(self, steps: int) -> set[int]:
        return set(self.tasks[: -(-steps // self.every)])

    def describe(self) -> str:
        return f"cycle through tasks {list(self.tasks)}, {self.every:,} steps each"


@dataclass(frozen=True)
class RandomDraw:
    """Every ``every`` steps a task drawn uniformly from ``tasks``; phase k's draw is seeded by (seed, k)."""

    every: int
    tasks: tuple[int, ...]
    seed: int

    def task_at(self, step: int) -> int:
        phase = step // self.every
        return self.tasks[int(np.random.default_rng([self.seed, phase]).integers(len(self.tasks)))]

    def tasks_before(self, steps: int) -> set[int]:
        return set(self.tasks)

    def describe(self) -> str:
        return f"random task from {list(self.tasks)} every {self.every:,} steps"


@dataclass(frozen=True)
class Explicit:
    """An explicit list of ``(step, task)`` switches; task 0 until the first one."""

    switches: tuple[tuple[int, int], ...]

    def task_at(self, step: int) -> int:
        task = 0
        for at, scheduled in self.switches:
            if at > step:
                break
            task = scheduled
        return task

    def tasks_before(self, steps: int) -> set[int]:
        return {0} | {task for at, task in self.switches if at < steps}

    def describe(self) -> str:
        return "tasks " + ", ".join(f"{task} from step {at:,}" for at, task in self.switches)


Schedule = EveryNSteps | Cyclic | RandomDraw | Explicit
