"""TensorBoard output that a crash cannot leave ahead of the last checkpoint.

A resumed run continues from its last checkpoint; had the crashed process already written points past
that step, the resumed one would write them again and TensorBoard would show two values per step. So,
while checkpoints are on, :class:`DeferredOutput` holds the logged points in memory and writes them to the
event file only when a checkpoint is written (and at the end of the run): the event files always end at
or before the last checkpoint's step, and a resumed run (a new event file in the same directory) starts
right after it. A crash loses only the points of the steps that the resume runs again.
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.logger import KVWriter


class DeferredOutput(KVWriter):
    """Wraps an SB3 output format; ``write`` is held until :meth:`commit` when ``defer`` is true."""

    def __init__(self, output: KVWriter, defer: bool) -> None:
        self.output = output
        self.defer = defer
        self._pending: list[tuple[dict[str, Any], dict[str, tuple[str, ...]], int]] = []

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        # SB3 clears its dicts after each dump, so hold copies.
        self._pending.append((dict(key_values), dict(key_excluded), step))
        if not self.defer:
            self.commit()

    def commit(self) -> None:
        """Write every held point to the wrapped output."""
        for key_values, key_excluded, step in self._pending:
            self.output.write(key_values, key_excluded, step)
        self._pending.clear()

    def close(self) -> None:
        """Close the wrapped output; points not committed are dropped (they lie past the last checkpoint)."""
        self._pending.clear()
        self.output.close()
