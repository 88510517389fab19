"""Steps per second of PPO with layer resets and with plasticity injection against plain PPO.

Through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, Adam, same seed, four tasks over the run), interleaved with a plain-PPO run in this one process
for each variant: ``reset`` resets the last layer of actor and critic at every task switch (the fast
engine's hand-written gradient still applies); ``inject`` injects a fresh linear head at every switch (three
linear heads each from the first switch on, and autograd instead of the hand-written gradient, which knows
plain ``Linear`` heads only). No target: the cost is stated.

    .venv/bin/python bench/structural_throughput.py [--steps 50000] [--rounds 3] [--tools reset inject]
"""

from __future__ import annotations

from throughput import compare_variants

from nested_ac.config import RunConfig


def at_switch(tool: str):
    def enable(config: RunConfig) -> None:
        getattr(config, tool).at = "switch"

    return enable


if __name__ == "__main__":
    compare_variants(__doc__, {tool: (at_switch(tool), 0.0) for tool in ("reset", "inject")}, "--tools")
