"""Steps per second of PPO with ``--optimizer upgd`` against ``--optimizer adam`` (target ≥ 0.9×).

Both through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, same seed), interleaved in this one process; UPGD at its defaults, with the utility logging
at its default interval.

    .venv/bin/python bench/upgd_throughput.py [--steps 50000] [--rounds 3]
"""

from __future__ import annotations

from throughput import compare_variant


def use_upgd(config) -> None:
    config.optimizer.name = "upgd"


if __name__ == "__main__":
    compare_variant(__doc__, ("adam", "upgd"), 0.9, use_upgd)
