"""Steps per second of PPO with ``--optimizer upgd`` against ``--optimizer adam`` (target ≥ 0.9×).

Both through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, same seed), interleaved in this one process; UPGD at its defaults, with the utility logging
at its default interval.

    .venv/bin/python bench/upgd_throughput.py [--steps 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy

import torch
from throughput import bench_config, compare_configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    adam = bench_config(args.steps)
    upgd = copy.deepcopy(adam)
    upgd.optimizer.name = "upgd"
    compare_configs(adam, upgd, ("adam", "upgd"), args.rounds, target=0.9)


if __name__ == "__main__":
    main()
