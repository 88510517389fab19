"""Chaos: a sweep disturbed by random faults, each followed by a rerun, ends equal to an undisturbed one.

A sweep of 4 small runs (2 variants × 2 seeds, 2 workers) is run once undisturbed (the reference). Then the
same sweep, in another directory, is started again and again; each time, after a random delay, one fault
is injected — SIGKILL, SIGHUP or SIGTERM, to the sweep process or to one of its workers; a sweep that
ends is rerun, one that survives the fault (an idle worker ignores SIGTERM while its sweep lives) meets the
next fault. After ``--faults`` faults the sweep is rerun undisturbed until it finishes. Reported:
faults injected, workers still alive 15 s after their sweep ended (orphans), runs lost (a run whose final
parameters are not bit for bit those of the reference, or that never finished), points duplicated (a
TensorBoard step written twice for a tag) and points missing or different from the reference (``time/*``
aside: wall-clock). Targets: runs lost 0, points duplicated 0.

    .venv/bin/python bench/chaos_sweep.py [--faults 20] [--seed 0] [--steps 50000] [--max-delay 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from stable_baselines3 import PPO

from nested_ac.report import read_scalars
from nested_ac.sweep import load_experiment, run_status

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = """
name: chaos
steps: {steps}
seeds: [0, 1]
base:
  env: {{id: nested_ac/PermutedCartPole-v0, n_envs: 2, schedule: {{every: 4000}}}}
  ppo: {{n_steps: 64, batch_size: 64, n_epochs: 2}}
  checkpoint: {{every: 1024}}
variants:
  - name: adam
  - name: adam-1-epoch
    set: {{ppo.n_epochs: 1}}
"""
FAULTS = (signal.SIGKILL, signal.SIGHUP, signal.SIGTERM)


def start_sweep(path: Path, sweep_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "nested_ac.cli", "sweep", str(path), "--sweep-dir", str(sweep_dir)]
    return subprocess.Popen(
        [*command, "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (pool workers share their sweep's)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def workers_of(pid: int, sweep_dir: Path) -> list[int]:
    return [p for p in processes_mentioning(str(sweep_dir)) if p != pid]


def wait_until_gone(sweep_dir: Path, seconds: float = 15) -> int:
    """Wait for every process of the sweep to end; returns how many were still alive (then killed)."""
    deadline = time.monotonic() + seconds
    while processes_mentioning(str(sweep_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = processes_mentioning(str(sweep_dir))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return len(left)


def compare(runs, reference_runs) -> tuple[int, int, int]:
    """(runs lost, points duplicated, points missing or different) against the reference sweep."""
    lost = duplicated = different = 0
    for spec, ref in zip(runs, reference_runs, strict=True):
        if run_status(spec) != "done":
            lost += 1
            continue
        ours, theirs = PPO.load(spec.run_dir / "model.zip"), PPO.load(ref.run_dir / "model.zip")
        pairs = zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True)
        same = ours.num_timesteps == theirs.num_timesteps and all(torch.equal(p, q) for p, q in pairs)
        lost += not same
        got, expected = read_scalars(spec.run_dir), read_scalars(ref.run_dir)
        for tag in set(got) | set(expected):
            steps = [step for step, _ in got.get(tag, [])]
            duplicated += len(steps) - len(set(steps))
            if not tag.startswith("time/"):
                different += len(set(got.get(tag, [])) ^ set(expected.get(tag, [])))
    return lost, duplicated, different


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--max-delay", type=float, default=8.0, help="most seconds between faults")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chaos.yaml"
        path.write_text(EXPERIMENT.format(steps=args.steps))
        reference_dir, chaos_dir = Path(tmp) / "reference", Path(tmp) / "chaos"
        start = time.perf_counter()
        assert start_sweep(path, reference_dir).wait() == 0, "the undisturbed sweep failed"
        print(f"undisturbed sweep: {time.perf_counter() - start:.0f} s")

        injected: Counter[str] = Counter()
        exits: Counter[int] = Counter()
        orphans = starts = 0
        runs = load_experiment(path, chaos_dir).runs
        process: subprocess.Popen | None = None
        while sum(injected.values()) < args.faults:
            if process is None:
                if all(run_status(spec) == "done" for spec in runs):
                    print("the sweep finished before every fault was injected: use more --steps")
                    break
                process, starts = start_sweep(path, chaos_dir), starts + 1
            try:  # a random moment of this sweep's life, unless it ends first
                exits[process.wait(timeout=rng.uniform(0.5, args.max_delay))] += 1
                orphans += wait_until_gone(chaos_dir)
                process = None
                continue
            except subprocess.TimeoutExpired:
                pass
            signum, to_worker = rng.choice(FAULTS), rng.random() < 0.5
            workers = workers_of(process.pid, chaos_dir) if to_worker else []
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(workers) if workers else process.pid, signum)
                injected[f"{signal.Signals(signum).name} to {'a worker' if workers else 'the sweep'}"] += 1
            # A sweep that survives the fault (a worker stopped, or an idle one that ignored it) meets the
            # next fault; one that ends is followed by a rerun.
        if process is not None:
            exits[process.wait()] += 1
            orphans += wait_until_gone(chaos_dir)
        reruns = 0
        while not all(run_status(spec) == "done" for spec in runs) and reruns < 5:
            process = start_sweep(path, chaos_dir)
            exits[process.wait()] += 1
            orphans += wait_until_gone(chaos_dir)
            reruns += 1
        lost, duplicated, different = compare(runs, load_experiment(path, reference_dir).runs)
        resumed = sum(len(list(spec.run_dir.glob("events.out.tfevents.*"))) - 1 for spec in runs)
    total = sum(injected.values())
    print(f"faults injected: {total} ({', '.join(f'{k}: {v}' for k, v in sorted(injected.items()))})")
    print(f"sweep starts: {starts} + {reruns} final reruns; exit codes: {dict(sorted(exits.items()))}")
    print(f"runs continued from a checkpoint by a later process: {resumed} times")
    print(f"workers alive 15 s after their sweep ended: {orphans}")
    print(f"runs lost: {lost} of {len(runs)} (final parameters not bit for bit the undisturbed sweep's)")
    print(f"points duplicated: {duplicated}; points missing or different (time/* aside): {different}")
    ok = total >= args.faults and lost == 0 and duplicated == 0 and different == 0 and orphans == 0
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
