"""Steps per second of PPO with each forgetting tool (SPG, gradient projection, NCL) against plain PPO.

Through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, Adam, same seed, four tasks over the run, so each tool acts for the last three quarters),
interleaved with a plain-PPO run in this one process for each tool. Targets: ≥ 0.8× for SPG and NCL;
projection (one extra forward and backward pass on the memory of the past tasks per optimizer step) has
its cost stated, no target.

    .venv/bin/python bench/forgetting_throughput.py [--steps 50000] [--rounds 3] [--tools spg ncl projection]
"""

from __future__ import annotations

from throughput import compare_variants

from nested_ac.config import RunConfig

TARGETS = {"spg": 0.8, "ncl": 0.8, "projection": 0.0}


def switch_on(tool: str):
    def enable(config: RunConfig) -> None:
        getattr(config, tool).enabled = True

    return enable


if __name__ == "__main__":
    compare_variants(
        __doc__, {tool: (switch_on(tool), target) for tool, target in TARGETS.items()}, "--tools"
    )
