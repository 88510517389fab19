"""Task schedules: a map from the global environment step (summed over parallel copies) to a task."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EveryNSteps:
    """A new task every ``every`` global steps: task = step // every; ``every = 0`` never switches."""

    every: int

    def task_at(self, step: int) -> int:
        return step // self.every if self.every > 0 else 0

    def describe(self) -> str:
        return f"new task every {self.every:,} steps" if self.every > 0 else "stationary"
