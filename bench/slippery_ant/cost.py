"""What the shipped ``slippery-ant`` experiment costs: the Ant's physics alone and each arm's training.

    python bench/slippery_ant/cost.py physics [--steps 20000]
    python bench/slippery_ant/cost.py train [--steps 20480] [--variants ppo-adam,ppo-cbp,...]

``physics`` steps the experiment's SlipperyAnt (one copy, its env settings) with N(0, 1) actions, resetting at
each episode end, and prints env steps/s (and Gymnasium's plain Ant-v5 for comparison). ``train`` trains
each arm (variant, seed 0) of the experiment exactly as the sweep would, for ``--steps`` steps (10 updates of
2048 by default), and prints its steps/s, the core-hours of one 20M-step run and of the study (every
variant × the experiment's seeds, one core per run). Both report wall-clock rates and rates per second of
the process's own CPU time: on a shared machine the second is what a dedicated core would give (less the
cache and memory contention of the neighbours). One torch thread throughout.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch


def physics(steps: int) -> None:
    from nested_ac.sweep import load_experiment

    with tempfile.TemporaryDirectory() as directory:
        config = load_experiment("slippery-ant", directory).runs[0].config
    for name, env_id, kwargs in (
        ("SlipperyAnt (the experiment's settings)", config.env.id, {"task_seed": 0, **config.env.kwargs}),
        ("Ant-v5 (Gymnasium's defaults)", "Ant-v5", {}),
    ):
        env = gym.make(env_id, **kwargs)
        rng = np.random.default_rng(0)
        actions = rng.standard_normal((steps, *env.action_space.shape)).astype(np.float32)
        if env_id == "Ant-v5":
            actions = np.clip(actions, -1.0, 1.0)
        env.reset(seed=0)
        episodes, start, cpu = 0, time.perf_counter(), time.process_time()
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
                episodes += 1
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"{name}: {steps:,} steps in {seconds:.1f} s wall, {cpu:.1f} s CPU = {steps / seconds:,.0f} env "
            f"steps/s wall, {steps / cpu:,.0f} per CPU second ({episodes} resets)"
        )


def train_arms(steps: int, variants: list[str] | None) -> None:
    from nested_ac.sweep import load_experiment
    from nested_ac.train import train

    with tempfile.TemporaryDirectory() as directory:
        experiment = load_experiment("slippery-ant", directory)
        seeds = len({run.seed for run in experiment.runs})
        runs = [run for run in experiment.runs if not run.seed and (not variants or run.variant in variants)]
        total_hours = 0.0
        for run in runs:
            config = run.config
            full = config.steps
            config.steps, config.run_dir, config.progress_bar = steps, str(Path(directory) / "t"), False
            cpu = time.process_time()
            result = train(config)
            cpu = time.process_time() - cpu
            rate, cpu_rate = result.steps / result.seconds, result.steps / cpu
            hours = full / cpu_rate / 3600
            total_hours += hours * seeds
            print(
                f"{run.variant}: {result.steps:,} steps in {result.seconds:.0f} s wall, {cpu:.0f} s CPU = "
                f"{rate:,.0f} steps/s wall, {cpu_rate:,.0f} per CPU second; a {full / 1e6:.0f}M-step run: "
                f"{hours:.1f} core-hours at the CPU rate"
            )
        print(f"the study ({len(runs)} variants x {seeds} seeds): {total_hours:,.0f} core-hours")


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("physics").add_argument("--steps", type=int, default=20_000)
    train_parser = commands.add_parser("train")
    train_parser.add_argument("--steps", type=int, default=20_480)
    train_parser.add_argument("--variants", help="comma-separated (default: every variant)")
    args = parser.parse_args()
    if args.command == "physics":
        physics(args.steps)
    else:
        train_arms(args.steps, args.variants.split(",") if args.variants else None)


if __name__ == "__main__":
    main()
