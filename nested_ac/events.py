"""TensorBoard output that a crash cannot leave ahead of the last checkpoint.

A resumed run continues from its last checkpoint; had the crashed process already written points past
that step, the resumed one would write them again and TensorBoard would show two values per step. So,
while checkpoints are on, :class:`DeferredOutput` holds the logged points in memory and writes them to the
event file only when a checkpoint is written (and at the end of the run): the event files always end at
or before the last checkpoint's step, and a resumed run (a new event file in the same directory) starts
right after it. A crash loses only the points of the steps that the resume runs again.

A crash can still land between writing the points and writing the checkpoint (or ``model.zip``), so each
checkpoint also records the size of every event file just after its points were written
(:func:`event_file_sizes`), and a resume first cuts the files back to those sizes (:func:`rewind_events`):
whatever a dead process wrote after its last checkpoint is dropped, and the resumed run writes it again
once. Event files are sequences of records, so a cut at a recorded size leaves a valid file.
"""

from __future__ import annotations

import os
from pathlib import Path
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

    def flush(self) -> None:
        """Write every held point and wait until the wrapped output has them on disk."""
        self.commit()
        writer = getattr(self.output, "writer", None)  # SB3's TensorBoardOutputFormat: a SummaryWriter
        if writer is not None:
            writer.flush()

    def close(self) -> None:
        """Close the wrapped output; points not committed are dropped (they lie past the last checkpoint)."""
        self._pending.clear()
        self.output.close()


EVENT_FILES = "events.out.tfevents.*"


def event_file_sizes(run_dir: Path) -> dict[str, int]:
    """The size in bytes of each TensorBoard event file in ``run_dir``, by name."""
    return {path.name: path.stat().st_size for path in sorted(Path(run_dir).glob(EVENT_FILES))}


def rewind_events(run_dir: Path, sizes: dict[str, int]) -> None:
    """Cut ``run_dir``'s event files back to ``sizes`` (recorded by a checkpoint); a file that did not exist
    then (a process that died before its first checkpoint) is removed."""
    for path in Path(run_dir).glob(EVENT_FILES):
        if path.name not in sizes:
            path.unlink()
        elif path.stat().st_size > sizes[path.name]:
            os.truncate(path, sizes[path.name])
