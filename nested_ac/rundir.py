"""Run directories: one writer at a time, and writes that stop cleanly when the disk is full.

**One writer.** A process that trains a run holds an exclusive OS lock (``fcntl.flock``) on the file
``.lock`` in the run directory for as long as it trains it; the file holds the holder's PID. The kernel
drops the lock when the holder's last file descriptor closes, so a process killed by any signal (even
SIGKILL) never leaves a stale lock: the directory is free at once. A second process that asks for a held
directory gets :class:`RunDirBusy`, naming the holder. Within one process :func:`hold` is re-entrant (a
sweep's worker holds the directory while it decides how to continue the run, then trains it).

**Disk full.** :func:`writing` turns ENOSPC (and EDQUOT, a full quota) raised while writing a run's file
into :class:`DiskFull`, which names the file; the trainer adds the last checkpoint and how to resume.
Every file the trainer writes is either atomic (checkpoints, ``model.zip``: a temporary file, then a
rename) or rewound on resume (event files), so a failed write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nested_ac.errors import ConfigError

LOCK_FILE = ".lock"

_held: dict[Path, tuple[int, int]] = {}  # run directory -> (lock file descriptor, hold depth)


class RunDirBusy(ConfigError):
    """Another process trains this run directory now."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"run directory {run_dir} is being trained by {holder} (it holds {run_dir / LOCK_FILE}); "
            "wait for it to finish or stop it, then resume"
        )
        self.run_dir = run_dir
        self.pid = pid

    def __reduce__(self) -> tuple[type, tuple[Path, int | None]]:  # crosses process boundaries in sweeps
        return type(self), (self.run_dir, self.pid)


def _read_pid(path: Path) -> int | None:
    """The PID in a held lock file; the holder writes it just after locking, so wait a moment for it."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text())
        time.sleep(0.005)
    return None


def _try_lock(run_dir: Path) -> int:
    """A descriptor of ``run_dir``'s lock file, locked by this process; RunDirBusy if another holds it."""
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirBusy(run_dir, _read_pid(path)) from None
    return fd


@contextlib.contextmanager
def hold(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` (an existing directory) exclusively while the block runs; RunDirBusy if another
    process holds it."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
    else:
        fd = _try_lock(run_dir)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[key] = (fd, 1)
    try:
        yield
    finally:
        fd, depth = _held.pop(key)
        if depth > 1:
            _held[key] = (fd, depth - 1)
        else:
            os.close(fd)  # closing the last descriptor releases the lock


def holder(run_dir: str | Path) -> int | None:
    """The PID of the process that holds ``run_dir`` now (0 if it could not be read), or None if free."""
    run_dir = Path(run_dir)
    if not (run_dir / LOCK_FILE).exists():
        return None
    try:
        os.close(_try_lock(run_dir))
    except RunDirBusy as busy:
        return busy.pid or 0
    return None


class DiskFull(OSError):
    """No space left on the device (or quota) while writing one of a run's files."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.ENOSPC, f"disk full (no space left on device) while writing {what}")
        self.what = what
        self.last_checkpoint: Path | None = None
        self.run_dir: Path | None = None

    def __str__(self) -> str:
        kept = f"; the last checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else ""
        again = f"; free some space, then: nested-ac train --resume {self.run_dir}" if self.run_dir else ""
        return f"{self.strerror}{kept}{again}"


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Raise :class:`DiskFull` naming ``what`` if the block fails for lack of space."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(what) from None
        raise


def replace_atomically(path: Path, write: Callable[[Path], None], what: str) -> None:
    """Write ``path`` through ``write(temporary_path)``, synced, then renamed over ``path``: a crash or a
    full disk leaves the previous ``path`` (or none) and no partial file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with writing(what):
            write(temporary)
            fd = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
