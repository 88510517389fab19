"""Run directories: their layout, one writer at a time, and writes that stop cleanly when the disk is full.

**Layout.** This module alone names the files of a run directory::

    <run>/config.yaml         the resolved configuration (its presence makes a directory a run)
    <run>/versions.json       the library versions the run started with
    <run>/events.out.tfevents.*   TensorBoard
    <run>/checkpoints/step_<N>.pt the last checkpoints (see :mod:`nested_ac.checkpoint`)
    <run>/summary.json        the continual metrics, written when the run finishes
    <run>/model.zip           the final model: the run is finished
    <run>/report/             the run's own report (report.md, figures), written after the model
    <run>/.lock               held by the process that trains the run

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
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nested_ac.errors import ConfigError

CONFIG_FILE = "config.yaml"
VERSIONS_FILE = "versions.json"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.zip"
CHECKPOINT_DIR = "checkpoints"
REPORT_DIR = "report"
CHECKPOINT_NAME = re.compile(r"^step_(\d+)\.pt$")
LOCK_FILE = ".lock"


def checkpoint_file(step: int) -> str:
    """The name of the checkpoint taken at environment step ``step`` (it matches CHECKPOINT_NAME)."""
    return f"step_{step}.pt"


def check_directory_name(what: str, name: str) -> None:
    """A ConfigError unless ``name`` is one directory name, so that what is written under it stays inside
    its parent: not empty, not ``.`` or ``..``, no ``/`` (or the OS's separator) and no NUL."""
    separators = {"/", os.sep, "\0"} | ({os.altsep} if os.altsep else set())
    if name in ("", ".", "..") or any(separator in name for separator in separators):
        raise ConfigError(f"{what} must be a single directory name (no '/', not '.' or '..'), got {name!r}")


def create(parent: str | Path, name: str) -> Path:
    """A new directory ``parent/name``, or ``parent/name_1``, ``_2``... if taken; never an existing one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    candidate, suffix = parent / name, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = parent / f"{name}_{suffix}"


def is_run(run_dir: Path) -> bool:
    return (run_dir / CONFIG_FILE).is_file()


def is_finished(run_dir: Path) -> bool:
    """The run trained to its end (its final model is written)."""
    return (run_dir / MODEL_FILE).exists()


def has_checkpoint(run_dir: Path) -> bool:
    checkpoints = run_dir / CHECKPOINT_DIR
    return checkpoints.is_dir() and any(CHECKPOINT_NAME.match(path.name) for path in checkpoints.iterdir())


def status(run_dir: Path) -> str:
    """``done`` (finished), ``resume`` (unfinished, with a checkpoint to continue from) or ``new``."""
    if is_finished(run_dir):
        return "done"
    return "resume" if has_checkpoint(run_dir) else "new"


def find_runs(paths: list[str | Path] | tuple[str | Path, ...]) -> list[Path]:
    """Every run directory at or under ``paths``, sorted."""
    return sorted({config.parent for path in paths for config in Path(path).rglob(CONFIG_FILE)})


def write_json(run_dir: Path, name: str, data: dict) -> None:
    """Write ``data`` as the run's ``name`` file (SUMMARY_FILE, VERSIONS_FILE); a full disk is DiskFull."""
    with writing(str(run_dir / name)):
        (run_dir / name).write_text(json.dumps(data, indent=1))


def read_json(run_dir: Path, name: str) -> dict | None:
    """The run's ``name`` file (SUMMARY_FILE, VERSIONS_FILE), or None if it has none."""
    path = run_dir / name
    return json.loads(path.read_text()) if path.is_file() else None


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
