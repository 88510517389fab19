"""Steps per second of PPO with ``--cbp`` (continual backprop, defaults) against without (target ≥ 0.9×).

Both through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, Adam, same seed), interleaved in this one process.

    .venv/bin/python bench/cbp_throughput.py [--steps 50000] [--rounds 3]
"""

from __future__ import annotations

from throughput import compare_variant


def enable_cbp(config) -> None:
    config.cbp.enabled = True


if __name__ == "__main__":
    compare_variant(__doc__, ("ppo", "ppo --cbp"), 0.9, enable_cbp)
