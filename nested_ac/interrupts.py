"""Ctrl-C and SIGTERM during training: note the request, let the run stop at a consistent point.

While an :class:`InterruptGuard` is active, the first SIGINT or SIGTERM only records the signal; the
trainer finishes the current rollout and update, writes a checkpoint and stops. The previous handler is
put back at once, so a second Ctrl-C aborts immediately (the last periodic checkpoint stays intact).
A sweep uses the same guard in its own process, with a message of its own and a callback that passes the
signal on to its workers.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, run_dir: str) -> None:
        super().__init__(f"interrupted at step {step:,}; resume with: nested-ac train --resume {run_dir}")
        self.signum = signum
        self.step = step
        self.run_dir = run_dir
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple[type, tuple[int, int, str]]:  # crosses process boundaries in sweeps
        return type(self), (self.signum, self.step, self.run_dir)


class InterruptGuard:
    """Context manager: SIGINT/SIGTERM set :attr:`signum` (and call ``on_signal``) instead of stopping
    the process."""

    def __init__(
        self,
        message: str = "finishing the current update, then writing a checkpoint (send it again to abort now)",
        on_signal: Callable[[int], None] | None = None,
    ) -> None:
        self.signum: int | None = None
        self.message = message
        self.on_signal = on_signal
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.pop(signum))
        print(f"\n{signal.Signals(signum).name}: {self.message}", file=sys.stderr, flush=True)
        if self.on_signal is not None:
            self.on_signal(signum)

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
