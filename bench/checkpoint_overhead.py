"""Cost of periodic checkpoints: ``nested-ac train`` at the default ``checkpoint.every`` vs checkpoints off.

Both sides are ``nested_ac.train.train`` on the same config (permuted CartPole, 8 copies, default PPO),
timed end to end by ``throughput.framework``, in this one process and interleaved, so the machine's noise
hits both alike. Target: throughput ratio (with / without checkpoints) ≥ 0.98.

    .venv/bin/python bench/checkpoint_overhead.py [--steps 200000] [--rounds 3]
"""

from __future__ import annotations

from throughput import compare_variant

from nested_ac.config import CheckpointConfig


def no_checkpoints(config) -> None:
    config.checkpoint.every = 0


if __name__ == "__main__":
    label = f"checkpoint every {CheckpointConfig().every:,} steps"
    compare_variant(__doc__, ("no checkpoints", label), 0.98, lambda config: None, no_checkpoints, 200_000)
