"""Steps per second of PPO with layer resets and with plasticity injection against plain PPO.

Through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, Adam, same seed, four tasks over the run), interleaved with a plain-PPO run in this one process
for each variant: ``reset`` resets the last layer of actor and critic at every task switch (the fast
engine's hand-written gradient still applies); ``inject`` injects a fresh linear head at every switch (three
linear heads each from the first switch on, and autograd instead of the hand-written gradient, which knows
plain ``Linear`` heads only). No target: the cost is stated.

    .venv/bin/python bench/structural_throughput.py [--steps 50000] [--rounds 3] [--tools reset inject]
"""

from __future__ import annotations

import argparse

import torch
from throughput import bench_config, compare_configs

VARIANTS = ("reset", "inject")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tools", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for tool in args.tools:
        base, ours = bench_config(args.steps), bench_config(args.steps)
        getattr(ours, tool).at = "switch"
        compare_configs(base, ours, ("ppo", f"ppo + {tool}"), args.rounds, 0.0)


if __name__ == "__main__":
    main()
