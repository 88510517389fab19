"""Cost of the plasticity diagnostics at the default interval: ``nested-ac train`` with vs without them.

Both through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs), interleaved in this one process. Target: throughput ratio ≥ 0.95.

    .venv/bin/python bench/diagnostics_overhead.py [--steps 100000] [--rounds 3]
"""

from __future__ import annotations

from throughput import compare_variant

from nested_ac.config import DiagnosticsConfig


def no_diagnostics(config) -> None:
    config.diagnostics.every = 0


if __name__ == "__main__":
    label = f"diagnostics every {DiagnosticsConfig().every} rollouts"
    compare_variant(__doc__, ("no diagnostics", label), 0.95, lambda config: None, no_diagnostics, 100_000)
