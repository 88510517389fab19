"""Sweeps: every (variant, seed) of an experiment file as its own run, in parallel, resumable.

An experiment file is YAML (a shipped one starts with a comment line, its ``nested-ac list experiments``
description)::

    name: collapse                      # the sweep directory's default name
    steps: 1_000_000                    # per run
    seeds: [0, 1, 2, 3, 4]
    base:                               # any RunConfig keys, shared by every variant
      env: {id: nested_ac/PermutedCartPole-v0, n_envs: 16, schedule: {every: 100_000}}
      ppo: {n_epochs: 4}
    variants:                           # one entry per agent variant; names are unique
      - name: ppo-adam
      - name: nested
        agent: nested-ppo
      - name: upgd
        preset: upgd-ppo                # a shipped preset (nested-ac list presets) as the variant's start
        set: {ppo.n_epochs: 10}         # dotted overrides of this variant only

A variant's config is: defaults ← its ``preset`` ← ``base`` ← its ``agent`` / ``optimizer`` ← its ``set``.

Run ``(variant, seed)`` lives in ``SWEEP_DIR/<variant>/seed<seed>/``. A finished run (``model.zip``) is
skipped, an interrupted one with a checkpoint is resumed, so running the same sweep again finishes it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nested_ac import dashboard
from nested_ac.config import RunConfig, load_yaml, resolve_config
from nested_ac.errors import ConfigError, unknown_choice
from nested_ac.experiments import EXPERIMENTS
from nested_ac.interrupts import SIGNALS, InterruptGuard, TrainingInterrupted
from nested_ac.presets import load_preset
from nested_ac.train import resume, train, validate

BACKENDS = ("local", "ray")

EXPERIMENT_KEYS = ("name", "steps", "seeds", "base", "variants")
VARIANT_KEYS = ("name", "preset", "agent", "optimizer", "set")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its variant, seed, directory and fully resolved configuration; ``hparams``: the
    config keys any variant changes, which its HParams session records."""

    variant: str
    seed: int
    run_dir: Path
    config: RunConfig
    hparams: tuple[str, ...] = ()


OnDone = Callable[[RunSpec, BaseException | None], None]
"""Called as each run ends: its spec and its exception (None: finished)."""


@dataclass
class Experiment:
    """A validated experiment file: every (variant, seed) run it asks for."""

    name: str
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
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: 'seeds' has duplicates: {seeds}")
    variants = data.get("variants")
    if not isinstance(variants, list) or not variants:
        raise ConfigError(f"{path}: 'variants' must be a non-empty list of variants")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: 'base' must be a mapping of config keys")
    name = str(data.get("name") or path.stem)
    root = Path(sweep_dir) if sweep_dir is not None else Path("runs") / name
    experiment = Experiment(name)
    seen: set[str] = set()
    hparams: set[str] = set()  # every key any run changes: each run's HParams session records them all
    for index, variant in enumerate(variants):
        if not isinstance(variant, dict) or not variant.get("name"):
            raise ConfigError(f"{path}: variant #{index + 1} needs a 'name'")
        label = str(variant["name"])
        if label in seen:
            raise ConfigError(f"{path}: duplicate variant name {label!r}")
        seen.add(label)
        extra = sorted(set(variant) - set(VARIANT_KEYS))
        if extra:
            raise ConfigError(
                f"{path}: variant {label!r} has unknown keys {extra}; valid: {', '.join(VARIANT_KEYS)}"
            )
        overrides = _flatten(base)
        if "steps" in data:
            overrides["steps"] = data["steps"]
        for key in ("agent", "optimizer"):
            if key in variant:
                overrides["agent" if key == "agent" else "optimizer.name"] = variant[key]
        overrides.update(variant.get("set") or {})
        preset = load_preset(str(variant["preset"])) if "preset" in variant else None
        for seed in seeds:
            overrides.update(seed=seed, run_dir=str(root / label), name=f"seed{seed}", progress_bar=False)
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
    """``done`` (model.zip), ``resume`` (a checkpoint to continue from) or ``new``."""
    if (spec.run_dir / "model.zip").exists():
        return "done"
    if any((spec.run_dir / "checkpoints").glob("step_*.pt")):
        return "resume"
    return "new"


def run_one(spec: RunSpec) -> str:
    """Train (or resume) one run in this process; returns its directory."""
    if run_status(spec) == "resume":
        return str(resume(spec.run_dir).run_dir)
    return str(train(spec.config, spec.hparams).run_dir)


class SweepInterrupted(Exception):
    """A signal stopped the sweep: no further run started, running ones wrote a checkpoint and stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"sweep interrupted by {signal.Signals(signum).name}; run the same command again to finish it "
            "(finished runs are skipped, interrupted ones resume from their checkpoint)"
        )
        self.exit_code = 128 + signum


def _leave_terminal_process_group() -> None:
    """Pool-worker initializer: a Ctrl-C reaches only the sweep process, which passes it on exactly once;
    between runs a worker ignores SIGINT/SIGTERM (during a run, training's own guard handles them)."""
    os.setpgrp()
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _pass_on_to_workers(signum: int) -> None:
    for worker in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):  # a worker that has just exited
            os.kill(worker.pid, signum)


def run_local(specs: Iterable[RunSpec], workers: int, on_done: OnDone) -> None:
    """Each run in its own process of a pool of ``workers`` (one torch thread each).

    The pool is handed a run only when a worker is free, so after SIGINT/SIGTERM no further run starts:
    the signal is passed on to the workers, each running run finishes its update, writes a checkpoint and
    stops, and :class:`SweepInterrupted` is raised."""
    pending = list(specs)
    running: dict[concurrent.futures.Future[str], RunSpec] = {}
    guard = InterruptGuard(
        "stopping the sweep: no new runs; running ones finish their update and write a checkpoint",
        _pass_on_to_workers,
    )
    pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_leave_terminal_process_group)
    with guard, pool:
        while pending or running:
            while pending and len(running) < workers and guard.signum is None:
                spec = pending.pop(0)
                running[pool.submit(run_one, spec)] = spec
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                on_done(running.pop(future), future.exception())
    if guard.signum is not None:
        raise SweepInterrupted(guard.signum)


def run_ray(
    specs: Iterable[RunSpec],
    workers: int,
    address: str | None,
    on_done: OnDone,
) -> None:
    """Each run as a Ray task needing one CPU: on the cluster at ``address``, or a local Ray instance
    on the loopback interface with ``workers`` CPUs when ``address`` is None."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'nested-ac[ray]'") from None
    if address is None:
        ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address)
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
    """Run every unfinished run of ``experiment``; returns the failures as lines (empty: all fine)."""
    from rich.progress import Progress

    if backend not in BACKENDS:
        raise unknown_choice("backend", backend, BACKENDS)

    todo = [spec for spec in experiment.runs if run_status(spec) != "done"]
    skipped = len(experiment.runs) - len(todo)
    failures: list[str] = []
    total = len(experiment.runs)
    print(f"sweep {experiment.name}: {total} runs, {skipped} already finished, {len(todo)} to run")
    first, configs = experiment.runs[0], [spec.config for spec in experiment.runs]
    dashboard.write_experiment(first.run_dir.parent.parent, configs, first.hparams)
    with Progress(transient=False, disable=not sys.stdout.isatty()) as progress:
        task = progress.add_task("runs", total=len(todo))

        def on_done(spec: RunSpec, error: BaseException | None) -> None:
            if isinstance(error, TrainingInterrupted):
                status = f"stopped at step {error.step:,}, checkpoint written"
            else:
                progress.advance(task)
                status = "ok"
                if error is not None:
                    reason = f"{type(error).__name__}: {error}"
                    status = f"FAILED: {reason}"
                    failures.append(f"{spec.run_dir}: {reason}")
            progress.console.print(f"{spec.variant} seed {spec.seed}: {status}")

        workers = workers or os.cpu_count() or 1
        if todo and backend == "ray":
            run_ray(todo, workers, address, on_done)
        elif todo:
            run_local(todo, workers, on_done)
    return failures
