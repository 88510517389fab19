"""Cost of periodic checkpoints: ``nested-ac train`` at the default ``checkpoint.every`` vs checkpoints off.

Both sides are ``nested_ac.train.train`` on the same config (permuted CartPole, 8 copies, default PPO),
timed end to end by ``throughput.framework``, in this one process and interleaved, so the machine's noise
hits both alike. Target: throughput ratio (with / without checkpoints) ≥ 0.98.

    .venv/bin/python bench/checkpoint_overhead.py [--steps 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch
from throughput import framework

from nested_ac.config import CheckpointConfig, RunConfig
from nested_ac.train import make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with_checkpoints = RunConfig(steps=args.steps, progress_bar=False)
    with_checkpoints.env.schedule.every = args.steps // 4
    without = copy.deepcopy(with_checkpoints)
    without.checkpoint.every = 0
    every = CheckpointConfig().every
    make_env(with_checkpoints).close()  # warm imports and registrations before timing
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            plain = framework(copy.deepcopy(without), Path(tmp))
            ours = framework(copy.deepcopy(with_checkpoints), Path(tmp))
            ratios.append(plain / ours)
            print(
                f"round {round_ + 1}: no checkpoints {args.steps / plain:,.0f} steps/s, "
                f"checkpoint every {every:,} steps {args.steps / ours:,.0f} steps/s, ratio {plain / ours:.3f}"
            )
    ratio = statistics.median(ratios)
    print(
        f"median throughput ratio with / without checkpoints: {ratio:.3f} "
        f"({'PASS' if ratio >= 0.98 else 'FAIL'}: target >= 0.98)"
    )


if __name__ == "__main__":
    main()
