"""Ctrl-C, SIGTERM and SIGHUP during training: note the request, let the run stop at a consistent point.

While an :class:`InterruptGuard` is active, the first SIGINT, SIGTERM or SIGHUP (a closed terminal or a
dropped SSH session) only records the signal; the trainer finishes the current rollout and update, writes
a checkpoint and stops. The previous handler is put back at once, so a second Ctrl-C aborts immediately
(the last periodic checkpoint stays intact). A SIGHUP that was ignored when the guard started (``nohup``)
stays ignored. After a SIGHUP, output that went to the (now closed) terminal goes to ``/dev/null``, so a
message written afterwards cannot fail. A sweep uses the same guard in its own process, with a message of
its own and a callback that passes the signal on to its workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    """Context manager: SIGINT/SIGTERM/SIGHUP set :attr:`signum` (and call ``on_signal``) instead of
    stopping the process."""

    def __init__(
        self,
        message: str = "finishing the current update, then writing a checkpoint (send it again to abort now)",
        on_signal: Callable[[int], None] | None = None,
    ) -> None:
        self.signum: int | None = None
        self.message = message
        self.on_signal = on_signal
        self._previous: dict[int, object] = {}
        self._terminal_fds: list[int] = []

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.pop(signum))
        with contextlib.suppress(OSError):  # a terminal that has just gone away
            print(f"\n{signal.Signals(signum).name}: {self.message}", file=sys.stderr, flush=True)
        if signum == signal.SIGHUP:
            _drop_output(self._terminal_fds)
        if self.on_signal is not None:
            self.on_signal(signum)

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._terminal_fds = [fd for fd in (1, 2) if os.isatty(fd)]
            for signum in SIGNALS:
                if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # nohup: the user asked to keep running without a terminal
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _drop_output(fds: list[int]) -> None:
    """Send what would be written to ``fds`` (the terminal's stdout/stderr) to /dev/null."""
    if not fds:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in fds:
        os.dup2(devnull, fd)
    os.close(devnull)
