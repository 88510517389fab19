"""Steps per second of PPO with ``--optimizer kron`` against ``--optimizer adam`` (its cost, stated).

Both through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, same seed), interleaved in this one process; Kron (heavyball's PSGDKron, eager) at its defaults.
No target: the ratio is its cost, stated.

    .venv/bin/python bench/kron_throughput.py [--steps 50000] [--rounds 3]
"""

from __future__ import annotations

from throughput import compare_variant


def use_kron(config) -> None:
    config.optimizer.name = "kron"


if __name__ == "__main__":
    compare_variant(__doc__, ("adam", "kron"), 0.0, use_kron)
