"""Steps per second of PPO with ``--cbp`` (continual backprop, defaults) against without (target ≥ 0.9×).

Both through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, Adam, same seed), interleaved in this one process.

    .venv/bin/python bench/cbp_throughput.py [--steps 50000] [--rounds 3]
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
    plain = bench_config(args.steps)
    cbp = copy.deepcopy(plain)
    cbp.cbp.enabled = True
    compare_configs(plain, cbp, ("ppo", "ppo --cbp"), args.rounds, target=0.9)


if __name__ == "__main__":
    main()
