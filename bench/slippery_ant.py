"""The shipped ``slippery-ant`` experiment on this machine: what it costs, and a local pilot before anyone
spends a cluster on it. One torch thread throughout.

    python bench/slippery_ant.py physics [--steps 20000]
    python bench/slippery_ant.py train [--steps 20480] [--variants ppo-adam,ppo-cbp,...]
    python bench/slippery_ant.py pilot --dir DIR [--variant ppo-adam] [--steps 2000000] [--every N]
    python bench/slippery_ant.py plot --dir DIR/ppo-adam --out docs/slippery-ant-pilot.png

``physics`` steps the experiment's SlipperyAnt (one copy, its env settings) with N(0, 1) actions, resetting at
each episode end, and prints env steps/s (and Gymnasium's plain Ant-v5's for comparison). ``train`` trains
each arm (variant, seed 0) of the experiment exactly as the sweep would, for ``--steps`` steps (10 updates of
2048 by default), and prints its steps/s, the core-hours of one 20M-step run and of the study (every
variant × the experiment's seeds, one core per run). Both report wall-clock rates and rates per second of
the process's own CPU time: on a shared machine the second is what a dedicated core would give (less the
cache and memory contention of the neighbours).

``pilot`` trains the experiment's run (variant, seed 0) exactly as ``nested-ac sweep slippery-ant`` would,
in ``DIR/<variant>``, but for ``--steps`` steps (its first 2M steps by default: the first friction, since the
first change comes at the first episode end after step 2,000,000) and, with ``--every``, with a shorter
change interval (same rule: the first episode end more than N steps after the previous change), so that a
short run goes through a friction change. An interrupted pilot continues with
``nested-ac resume DIR/<variant>``. ``plot`` draws the mean episode return of each rollout (2048 steps), its
running mean over 20 rollouts, and the friction changes (dashed lines).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from nested_ac.config import RunConfig
from nested_ac.sweep import load_experiment
from nested_ac.train import train


def arm(variant: str, directory: Path) -> RunConfig:
    """The configuration of the experiment's run of ``variant``, seed 0, with its runs under ``directory``."""
    (spec,) = [
        r for r in load_experiment("slippery-ant", directory).runs if r.variant == variant and not r.seed
    ]
    return spec.config


def physics(steps: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        config = arm("ppo-adam", Path(directory))
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


def pilot(directory: Path, variant: str, steps: int, every: int | None) -> None:
    config = arm(variant, directory)
    config.steps, config.run_dir, config.name, config.progress_bar = steps, str(directory), variant, False
    if every is not None:
        config.env.schedule.every = every
    result = train(config)
    rate = result.steps / result.seconds
    print(f"{variant}: {result.steps:,} steps in {result.seconds:,.0f} s ({rate:,.0f} steps/s)")
    print(f"switches (step, task): {result.switches}")


def plot(run_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nested_ac.report import read_scalars

    scalars = read_scalars(run_dir)
    steps, returns = (np.array(column) for column in zip(*scalars["episode/return"], strict=True))
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.plot(steps / 1e6, returns, lw=0.6, alpha=0.5, label="mean return of the episodes of each rollout")
    window = 20
    if len(returns) >= window:
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1 :] / 1e6, smooth, lw=2, label=f"running mean over {window} rollouts")
    for step, _ in scalars.get("task/switch", [])[1:]:
        axis.axvline(step / 1e6, color="grey", ls="--", lw=1)
    friction = scalars["task/friction"][0][1]
    axis.set(
        xlabel="environment steps (millions)",
        ylabel="episode return",
        title=f"slippery-ant, {run_dir.name}, seed 0, first friction ({friction:.3f})",
    )
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(f"figure written to {out}")


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
    pilot_parser = commands.add_parser("pilot")
    pilot_parser.add_argument("--dir", type=Path, required=True)
    pilot_parser.add_argument("--variant", default="ppo-adam")
    pilot_parser.add_argument("--steps", type=int, default=2_000_000)
    pilot_parser.add_argument("--every", type=int)
    plot_parser = commands.add_parser("plot")
    plot_parser.add_argument("--dir", type=Path, required=True)
    plot_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "physics":
        physics(args.steps)
    elif args.command == "train":
        train_arms(args.steps, args.variants.split(",") if args.variants else None)
    elif args.command == "pilot":
        pilot(args.dir, args.variant, args.steps, args.every)
    else:
        plot(args.dir, args.out)


if __name__ == "__main__":
    main()
