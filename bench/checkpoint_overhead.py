"""Cost of periodic checkpoints: ``nested-ac train`` at the default ``checkpoint.every`` vs checkpoints off.

Both sides are ``nested_ac.train.train`` on the same config (permuted CartPole, 8 copies, default PPO),
timed end to end by ``throughput.framework``, in this one process and interleaved, so the machine's noise
hits both alike. Target: throughput ratio (with / without checkpoints) ≥ 0.98.

    .venv/bin/python bench/checkpoint_overhead.py [--steps 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy

import torch
from throughput import bench_config, compare_configs

from nested_ac.config import CheckpointConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with_checkpoints = bench_config(args.steps)
    without = copy.deepcopy(with_checkpoints)
    without.checkpoint.every = 0
    label = f"checkpoint every {CheckpointConfig().every:,} steps"
    compare_configs(without, with_checkpoints, ("no checkpoints", label), args.rounds, target=0.98)


if __name__ == "__main__":
    main()
