"""Ctrl-C and SIGTERM during training: note the request, let the run stop at a consistent point.

While an :class:`InterruptGuard` is active, the first SIGINT or SIGTERM only records the signal; the
trainer finishes the current rollout and update, writes a checkpoint and stops. The previous handler is
put back at once, so a second Ctrl-C aborts immediately (the last periodic checkpoint stays intact).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, run_dir: str) -> None:
        super().__init__(f"interrupted at step {step:,}; resume with: nested-ac train --resume {run_dir}")
        self.signum = signum
        self.step = step
        self.exit_code = 128 + signum


class InterruptGuard:
    """Context manager: SIGINT/SIGTERM set :attr:`signum` instead of stopping the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.pop(signum))
        print(
            f"\n{signal.Signals(signum).name}: finishing the current update, then writing a checkpoint "
            "(send it again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
