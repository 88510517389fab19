"""Sweeps: every (variant, seed) of an experiment file as its own run, in parallel, resumable.

An experiment file is YAML (a shipped one starts with a comment line, its ``nested-ac list experiments``
description)::

    name: collapse                      # the sweep directory's default name
    steps: 1_000_000                    # per run
    seeds: [0, 1, 2, 3, 4]
    base:                               # any RunConfig keys, shared by every variant
      env: {id: nested_ac/PermutedCartPole-v0, n_envs: 16, schedule: {every: 100_000}}
      ppo: {n_epochs: 4}
    worlds:                             # optional: every variant runs in each world (a suite)
      - name: PermutedCartPole
      - name: PermutedAcrobot
        set: {env.id: nested_ac/PermutedAcrobot-v0}
    variants:                           # one entry per agent variant; names are unique
      - name: ppo-adam
      - name: nested
        agent: nested-ppo
      - name: upgd
        preset: upgd-ppo                # a shipped preset (nested-ac list presets) as the variant's start
        set: {ppo.n_epochs: 10}         # dotted overrides of this variant only

A variant's config is: defaults ← its ``preset`` ← ``base`` ← the world's ``set`` ← its ``agent`` /
``optimizer`` ← its ``set``: one setting per variant across every world.

Run ``(variant, seed)`` lives in ``SWEEP_DIR/<variant>/seed<seed>/``, or ``SWEEP_DIR/<world>/<variant>/
seed<seed>/`` in an experiment with worlds. A finished run (``model.zip``) is
skipped, an interrupted one with a checkpoint is resumed, one that died before its first checkpoint starts
again, and one whose directory another process holds (:mod:`nested_ac.rundir`) is listed as running
elsewhere and left alone; so running the same sweep again finishes it.

Pool workers die with the sweep: on Linux the kernel sends them SIGTERM when the sweep process dies
(``PR_SET_PDEATHSIG``), so a running run writes a checkpoint and stops; a watchdog thread in each worker
also polls for its parent (where ``prctl`` is unavailable it sends that SIGTERM itself) and ends an idle
worker whose sweep is gone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nested_ac import dashboard, rundir
from nested_ac.config import MAX_SEED, RunConfig, load_yaml, resolve_config
from nested_ac.errors import ConfigError, unknown_choice
from nested_ac.experiments import EXPERIMENTS
from nested_ac.interrupts import SIGNALS, InterruptGuard, TrainingInterrupted
from nested_ac.presets import load_preset
from nested_ac.rundir import LOCK_FILE, RunDirBusy, check_directory_name, hold, holder
from nested_ac.train import resume, train, validate

BACKENDS = ("local", "ray")

EXPERIMENT_KEYS = ("name", "steps", "seeds", "base", "worlds", "variants")
VARIANT_KEYS = ("name", "preset", "agent", "optimizer", "set")
WORLD_KEYS = ("name", "set")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its variant (``world/variant`` in an experiment with worlds), seed, directory and
    fully resolved configuration; ``hparams``: the config keys any variant changes, which its HParams
    session records."""

    variant: str
    seed: int
    run_dir: Path
    config: RunConfig
    hparams: tuple[str, ...] = ()


OnDone = Callable[[RunSpec, BaseException | None], None]
"""Called as each run ends: its spec and its exception (None: finished)."""


@dataclass
class Experiment:
    """A validated experiment file: every (variant, seed) run it asks for, all under ``root``."""

    name: str
    root: Path
    runs: list[RunSpec] = field(default_factory=list)


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value and key != "kwargs":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def experiment_path(experiment: str | Path) -> Path:
    """``experiment`` as a file: an existing path, else the shipped experiment of that name."""
    path = Path(experiment)
    if path.is_file():
        return path
    if path.suffix or len(path.parts) > 1:
        raise ConfigError(
            f"no experiment file {str(experiment)!r}; shipped experiments: {', '.join(EXPERIMENTS.names())}"
        )
    return EXPERIMENTS.path(str(experiment))


def _is_seed(seed: Any) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED


def _check_name(path: Path, what: str, name: str) -> None:
    """A ConfigError naming the file unless ``name`` is one directory name (it names a directory of runs)."""
    try:
        check_directory_name(what, name)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _named_entries(
    path: Path, data: dict[str, Any], key: str, valid: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The experiment's ``variants`` or ``worlds``: a non-empty list of mappings with unique names and only
    the ``valid`` keys; a ConfigError naming the entry otherwise."""
    entries, what = data.get(key), key.rstrip("s")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: '{key}' must be a non-empty list of {key}")
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConfigError(f"{path}: {what} #{index + 1} needs a 'name'")
        label = str(entry["name"])
        _check_name(path, f"a {what}'s name", label)
        if label in seen:
            raise ConfigError(f"{path}: duplicate {what} name {label!r}")
        seen.add(label)
        extra = sorted(set(entry) - set(valid))
        if extra:
            raise ConfigError(f"{path}: {what} {label!r} has unknown keys {extra}; valid: {', '.join(valid)}")
    return [{**entry, "name": str(entry["name"])} for entry in entries]


def load_experiment(experiment: str | Path, sweep_dir: str | Path | None = None) -> Experiment:
    """Parse and validate an experiment file (a path or a shipped name); every run's config is resolved,
    so bad keys fail here."""
    path = experiment_path(experiment)
    data = load_yaml(path)
    unknown = sorted(set(data) - set(EXPERIMENT_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown experiment keys {unknown}; valid keys: {', '.join(EXPERIMENT_KEYS)}"
        )
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(_is_seed(s) for s in seeds):
        raise ConfigError(
            f"{path}: 'seeds' must be a non-empty list of integers in 0 … {MAX_SEED}, got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: 'seeds' has duplicates: {seeds}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: 'base' must be a mapping of config keys")
    variants = _named_entries(path, data, "variants", VARIANT_KEYS)
    worlds = _named_entries(path, data, "worlds", WORLD_KEYS) if "worlds" in data else [{"name": ""}]
    name = str(data.get("name") or path.stem)
    _check_name(path, "the experiment's name", name)
    root = Path(sweep_dir) if sweep_dir is not None else Path("runs") / name
    experiment = Experiment(name, root)
    hparams: set[str] = set()  # every key any run changes: each run's HParams session records them all
    for world in worlds:
        for variant in variants:
            overrides = _flatten(base)
            if "steps" in data:
                overrides["steps"] = data["steps"]
            overrides.update(world.get("set") or {})
            for key in ("agent", "optimizer"):
                if key in variant:
                    overrides["agent" if key == "agent" else "optimizer.name"] = variant[key]
            overrides.update(variant.get("set") or {})
            preset = load_preset(str(variant["preset"])) if "preset" in variant else None
            label = "/".join(filter(None, (world["name"], variant["name"])))
            for seed in seeds:
                overrides.update(
                    seed=seed, run_dir=str(root / label), name=f"seed{seed}", progress_bar=False, report=False
                )
                try:
                    config = resolve_config(overrides=overrides, preset=preset)
                    validate(config)
                    hparams.update(dashboard.changed_keys(config))
                except ConfigError as error:
                    raise ConfigError(f"{path}: variant {label!r}: {error}") from None
                experiment.runs.append(RunSpec(label, seed, root / label / f"seed{seed}", config))
    keys = tuple(sorted(hparams))
    experiment.runs = [dataclasses.replace(spec, hparams=keys) for spec in experiment.runs]
    return experiment


def run_status(spec: RunSpec) -> str:
    """``done`` (finished), ``resume`` (a checkpoint to continue from) or ``new``: :func:`rundir.status`."""
    return rundir.status(spec.run_dir)


def _clear_unstarted(run_dir: Path) -> None:
    """Empty the directory of a run that died before its first checkpoint: nothing in it can be resumed."""
    for path in run_dir.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def run_one(spec: RunSpec) -> str:
    """Train, resume or restart one run in this process, holding its directory; returns the directory.
    RunDirBusy if another process holds it."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    with hold(spec.run_dir):
        status = run_status(spec)
        if status == "resume":
            return str(resume(spec.run_dir).run_dir)
        if status == "new":
            _clear_unstarted(spec.run_dir)
            train(spec.config, spec.hparams, into=spec.run_dir)
        return str(spec.run_dir)


class SweepStopped(Exception):
    """The sweep stopped before its end; ``exit_code`` is what the command exits with."""

    exit_code = 1


class SweepInterrupted(SweepStopped):
    """A signal stopped the sweep: no further run started, running ones wrote a checkpoint and stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"sweep interrupted by {signal.Signals(signum).name}; run the same command again to finish it "
            "(finished runs are skipped, interrupted ones resume from their checkpoint)"
        )
        self.exit_code = 128 + signum


class WorkerDied(SweepStopped):
    """A pool worker died (e.g. killed by the OOM killer): the pool cannot go on."""

    def __init__(self) -> None:
        super().__init__(
            "a worker process of the sweep died (killed?); no further run started, the others wrote a "
            "checkpoint and stopped; run the same command again to finish the sweep"
        )


PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.2
_busy = threading.Event()  # set while this worker runs a run
_parent: int | None = None  # the sweep process, in a worker


def _die_with_parent() -> bool:
    """Ask the kernel to send this process SIGTERM when its parent dies; False where it cannot (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, signalled_by_kernel: bool) -> None:
    """Worker thread: once the sweep process is gone, stop the running run (if the kernel does not) and
    end the worker as soon as it is idle."""
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    if not signalled_by_kernel:
        os.kill(os.getpid(), signal.SIGTERM)
    while _busy.is_set():
        time.sleep(WATCH_SECONDS)
    os._exit(128 + signal.SIGTERM)


def _when_idle(signum: int, _frame: object) -> None:
    """A worker's handler between runs: the sweep process passes its signals on to every worker and
    handles them itself, so an idle worker ignores them while the sweep lives and exits once it is gone."""
    if os.getppid() != _parent:
        os._exit(128 + signum)


def _init_worker(parent: int) -> None:
    """Pool-worker initializer: its own process group (a Ctrl-C reaches only the sweep process, which passes
    it on exactly once), idle-time signal handling, and death with the parent."""
    global _parent
    os.setpgrp()
    _parent = parent
    for signum in SIGNALS:
        signal.signal(signum, _when_idle)
    by_kernel = _die_with_parent()
    threading.Thread(target=_watch_parent, args=(parent, by_kernel), daemon=True).start()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(128 + signal.SIGTERM)


def _run_in_worker(spec: RunSpec) -> str:
    _busy.set()
    try:
        return run_one(spec)
    finally:
        _busy.clear()


def _pass_on_to_workers(signum: int) -> None:
    for worker in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):  # a worker that has just exited
            os.kill(worker.pid, signum)


def run_local(specs: Iterable[RunSpec], workers: int, on_done: OnDone) -> None:
    """Each run in its own process of a pool of ``workers`` (one torch thread each).

    The pool is handed a run only when a worker is free, so after SIGINT/SIGTERM/SIGHUP no further run
    starts: the signal is passed on to the workers, each running run finishes its update, writes a
    checkpoint and stops, and :class:`SweepInterrupted` is raised. If a worker dies, the pool is broken:
    the others are stopped the same way and :class:`WorkerDied` is raised."""
    pending = list(specs)
    running: dict[concurrent.futures.Future[str], RunSpec] = {}
    guard = InterruptGuard(
        "stopping the sweep: no new runs; running ones finish their update and write a checkpoint",
        _pass_on_to_workers,
    )
    pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(os.getpid(),))
    broken = False
    with guard, pool:
        while pending or running:
            while pending and len(running) < workers and guard.signum is None and not broken:
                spec = pending.pop(0)
                running[pool.submit(_run_in_worker, spec)] = spec
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                error = future.exception()
                broken = broken or isinstance(error, concurrent.futures.process.BrokenProcessPool)
                on_done(running.pop(future), error)
    if guard.signum is not None:
        raise SweepInterrupted(guard.signum)
    if broken:
        raise WorkerDied()


def connect_ray(workers: int, address: str | None) -> ModuleType:
    """Start Ray: connect to the cluster at ``address``, or start a local instance on the loopback
    interface with ``workers`` CPUs when ``address`` is None; returns the ``ray`` module. A ConfigError
    (nothing written yet) where Ray is not installed or ``address`` cannot be reached."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'nested-ac[ray]'") from None
    if address is None:
        ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1")
        return ray
    try:
        _check_reachable(address)
        ray.init(address=address)
    except (ConnectionError, TimeoutError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"cannot reach the Ray cluster at --address {address} ({reason}); start it (ray start --head) or "
            "give its address as `ray status` prints it, or leave --address out for a local Ray instance"
        ) from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """An OSError unless a TCP connection to ``address`` (``host:port``, optionally ``ray://``) opens within
    ``timeout`` seconds: Ray itself retries an unreachable cluster for minutes, logging each try.
    ``auto`` (a cluster on this machine) is left to Ray, which says at once when there is none."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise OSError(f"not host:port or ray://host:port: {address!r}")
    with socket.create_connection((host, int(port)), timeout=timeout):
        pass


def run_ray(ray: ModuleType, specs: Iterable[RunSpec], on_done: OnDone) -> None:
    """Each run as a Ray task needing one CPU, on the Ray that :func:`connect_ray` started; shuts it
    down after."""
    try:
        task = ray.remote(num_cpus=1)(run_one)
        pending = {task.remote(spec): spec for spec in specs}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready)
            try:
                ray.get(ready)
                on_done(spec, None)
            except Exception as error:  # noqa: BLE001  (a failed run is reported, the sweep goes on)
                on_done(spec, error)
    finally:
        ray.shutdown()


def run_sweep(
    experiment: Experiment, workers: int | None = None, backend: str = "local", address: str | None = None
) -> list[str]:
    """Run every unfinished run of ``experiment``; returns a line for each run left unfinished (failed,
    stopped, or running elsewhere; empty: all done). Raises :class:`SweepStopped` if the sweep stopped."""
    from rich.progress import Progress

    if backend not in BACKENDS:
        raise unknown_choice("backend", backend, BACKENDS)

    unfinished: list[str] = []
    todo = []
    for spec in experiment.runs:
        if run_status(spec) == "done":
            continue
        pid = holder(spec.run_dir)
        if pid is None:
            todo.append(spec)
        else:
            unfinished.append(f"{spec.run_dir}: running elsewhere (process {pid}); not started")
    workers = workers or os.cpu_count() or 1
    ray = connect_ray(workers, address) if todo and backend == "ray" else None  # before anything is written
    total = len(experiment.runs)
    elsewhere = f", {len(unfinished)} running elsewhere" if unfinished else ""
    print(
        f"sweep {experiment.name}: {total} runs, {total - len(todo) - len(unfinished)} already finished"
        f"{elsewhere}, {len(todo)} to run"
    )
    configs = [spec.config for spec in experiment.runs]
    dashboard.write_experiment(experiment.root, configs, experiment.runs[0].hparams)
    with Progress(transient=False, disable=not sys.stdout.isatty()) as progress:
        task = progress.add_task("runs", total=len(todo))

        def on_done(spec: RunSpec, error: BaseException | None) -> None:
            if isinstance(error, TrainingInterrupted):
                status = f"stopped at step {error.step:,}, checkpoint written"
                unfinished.append(f"{spec.run_dir}: {status}; run the sweep again to finish it")
            elif isinstance(error, RunDirBusy):
                status = f"running elsewhere (process {error.pid}); not started"
                unfinished.append(f"{spec.run_dir}: {status}")
            elif isinstance(error, concurrent.futures.process.BrokenProcessPool):
                status = "stopped: a worker process died; it resumes from its last checkpoint next time"
            else:
                progress.advance(task)
                status = "ok"
                if error is not None:
                    reason = f"{type(error).__name__}: {error}"
                    status = f"FAILED: {reason}"
                    unfinished.append(f"{spec.run_dir}: FAILED: {reason}")
            progress.console.print(f"{spec.variant} seed {spec.seed}: {status}")

        if ray is not None:
            run_ray(ray, todo, on_done)
        elif todo:
            run_local(todo, workers, on_done)
    return unfinished
