"""Steps per second of ``nested-ac train --agent nested-ppo`` (K = 2 critics) against ``--agent ppo``.

Both sides run ``nested_ac.train.train`` at identical settings (permuted CartPole, 8 copies, 256 steps,
batch 256, 10 epochs, Adam, same seed), interleaved in this one process so that the machine's noise hits
both alike; each is timed end to end. The nested side adds the outer critic's forward and backward pass on
every minibatch and the per-update diagnostics. Target: median ratio nested-ppo / ppo ≥ 0.8.

    .venv/bin/python bench/nested_throughput.py [--steps 50000] [--rounds 3]
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
    ppo = bench_config(args.steps)
    nested = copy.deepcopy(ppo)
    nested.agent, nested.nested.levels = "nested-ppo", 2
    compare_configs(ppo, nested, ("ppo", "nested-ppo (K=2)"), args.rounds, target=0.8)


if __name__ == "__main__":
    main()
