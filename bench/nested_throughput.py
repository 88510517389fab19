"""Steps per second of ``nested-ac train --agent nested-ppo`` (K = 2 critics) against ``--agent ppo``.

Both sides run ``nested_ac.train.train`` at identical settings (permuted CartPole, 8 copies, 256 steps,
batch 256, 10 epochs, Adam, same seed), interleaved in this one process so that the machine's noise hits
both alike; each is timed end to end. The nested side adds the outer critic's forward and backward pass on
every minibatch and the per-update diagnostics. Target: median ratio nested-ppo / ppo ≥ 0.8.

    .venv/bin/python bench/nested_throughput.py [--steps 50000] [--rounds 3]
"""

from __future__ import annotations

from throughput import compare_variant


def two_critics(config) -> None:
    config.agent, config.nested.levels = "nested-ppo", 2


if __name__ == "__main__":
    compare_variant(__doc__, ("ppo", "nested-ppo (K=2)"), 0.8, two_critics)
