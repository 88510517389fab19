"""Steps per second of PPO with ``--optimizer trac`` against ``--optimizer adam`` (target stated, ≥ 0.8×).

Both through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, same seed), interleaved in this one process; TRAC at its defaults (its scale logged every 10
updates).

    .venv/bin/python bench/trac_throughput.py [--steps 50000] [--rounds 3]
"""

from __future__ import annotations

from throughput import compare_variant


def use_trac(config) -> None:
    config.optimizer.name = "trac"


if __name__ == "__main__":
    compare_variant(__doc__, ("adam", "trac"), 0.8, use_trac)
