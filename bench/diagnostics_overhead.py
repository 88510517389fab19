"""Cost of the plasticity diagnostics at the default interval: ``nested-ac train`` with vs without them.

Both through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs), interleaved in this one process. Target: throughput ratio ≥ 0.95.

    .venv/bin/python bench/diagnostics_overhead.py [--steps 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy

import torch
from throughput import bench_config, compare_configs

from nested_ac.config import DiagnosticsConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with_diagnostics = bench_config(args.steps)
    without = copy.deepcopy(with_diagnostics)
    without.diagnostics.every = 0
    label = f"diagnostics every {DiagnosticsConfig().every} rollouts"
    compare_configs(without, with_diagnostics, ("no diagnostics", label), args.rounds, target=0.95)


if __name__ == "__main__":
    main()
