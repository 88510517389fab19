"""Steps per second of PPO with each regularizer (Parseval, weight clipping, C-CHAIN) against plain PPO.

Through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, Adam, same seed, four tasks over the run), interleaved with a plain-PPO run in this one process
for each tool in turn; each at the authors' PPO setting (Parseval λ = 1e-3, weight clipping κ = 3,
C-CHAIN's defaults). Targets: ≥ 0.9× for Parseval and weight clipping (a few small matrix operations per
step); C-CHAIN (two forward passes and one backward pass on its reference batch per optimizer step) has
its cost stated, no target.

    .venv/bin/python bench/regularizer_throughput.py [--steps 50000] [--rounds 3]
        [--variants parseval weight_clipping cchain]
"""

from __future__ import annotations

from throughput import compare_variants

SETTINGS = {  # tool: (its setting on a RunConfig, target)
    "parseval": (lambda config: setattr(config.parseval, "coef", 1e-3), 0.9),
    "weight_clipping": (lambda config: setattr(config.weight_clipping, "kappa", 3.0), 0.9),
    "cchain": (lambda config: setattr(config.cchain, "enabled", True), 0.0),
}

if __name__ == "__main__":
    compare_variants(__doc__, SETTINGS)
