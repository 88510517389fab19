"""Steps per second of PPO with each forgetting tool (SPG, gradient projection, NCL) against plain PPO.

Through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, Adam, same seed, four tasks over the run, so each tool acts for the last three quarters),
interleaved with a plain-PPO run in this one process for each tool. Targets: ≥ 0.8× for SPG and NCL;
projection (one extra forward and backward pass on the memory of the past tasks per optimizer step) has
its cost stated, no target.

    .venv/bin/python bench/forgetting_throughput.py [--steps 50000] [--rounds 3] [--tools spg ncl projection]
"""

from __future__ import annotations

import argparse

import torch
from throughput import bench_config, compare_configs

TARGETS = {"spg": 0.8, "ncl": 0.8, "projection": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tools", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for tool in args.tools:
        base, ours = bench_config(args.steps), bench_config(args.steps)
        getattr(ours, tool).enabled = True
        compare_configs(base, ours, ("ppo", f"ppo + {tool}"), args.rounds, TARGETS[tool])


if __name__ == "__main__":
    main()
