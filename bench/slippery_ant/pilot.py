"""The local pilot of the shipped ``slippery-ant`` experiment: one of its runs, shortened, before anyone
spends a cluster on it.

    python bench/slippery_ant/pilot.py run --dir DIR [--variant ppo-adam] [--steps 2000000] [--every N]
    python bench/slippery_ant/pilot.py plot --dir DIR/ppo-adam --out docs/slippery-ant-pilot.png

``run`` trains the experiment's run (variant, seed 0) exactly as ``nested-ac sweep slippery-ant`` would, in
``DIR/<variant>``, but for ``--steps`` steps (its first 2M steps by default: the first friction, since the
first change comes at the first episode end after step 2,000,000) and, with ``--every``, with a shorter
change interval (same rule: the first episode end more than N steps after the previous change), so that a
short run goes through a friction change. An interrupted run continues with
``nested-ac resume DIR/<variant>``.
``plot`` draws the mean episode return of each rollout (2048 steps), its running mean over 20 rollouts, and
the friction changes (dashed lines).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def run(directory: Path, variant: str, steps: int, every: int | None) -> None:
    from nested_ac.sweep import load_experiment
    from nested_ac.train import train

    (spec,) = [
        r for r in load_experiment("slippery-ant", directory).runs if r.variant == variant and not r.seed
    ]
    config = spec.config
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
    import numpy as np

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
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--dir", type=Path, required=True)
    run_parser.add_argument("--variant", default="ppo-adam")
    run_parser.add_argument("--steps", type=int, default=2_000_000)
    run_parser.add_argument("--every", type=int)
    plot_parser = commands.add_parser("plot")
    plot_parser.add_argument("--dir", type=Path, required=True)
    plot_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run(args.dir, args.variant, args.steps, args.every)
    else:
        plot(args.dir, args.out)


if __name__ == "__main__":
    main()
