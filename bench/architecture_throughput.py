"""Steps per second of PPO with each architecture (LayerNorm, CReLU, deep Fourier features, LayerNorm with
Normalize-and-Project) against plain ReLU PPO.

Through ``nested-ac train`` at identical settings (permuted CartPole, 8 copies, 256 steps, batch 256,
10 epochs, Adam, same seed, 64×64 networks), interleaved with a plain-PPO run in this one process for each
architecture; every variant on the fast engine's hand-written gradient. No target: the cost is stated
(CReLU and Fourier features double the inputs of every layer after the first).

    .venv/bin/python bench/architecture_throughput.py [--steps 50000] [--rounds 3]
        [--variants layer_norm crelu fourier nap]
"""

from __future__ import annotations

from throughput import compare_variants

from nested_ac.config import RunConfig


def layer_norm(config: RunConfig) -> None:
    config.network.layer_norm = True


def crelu(config: RunConfig) -> None:
    config.network.activation = "crelu"


def fourier(config: RunConfig) -> None:
    config.network.activation = "fourier"


def nap(config: RunConfig) -> None:
    config.network.layer_norm = True
    config.nap.enabled = True


VARIANTS = {"layer_norm": layer_norm, "crelu": crelu, "fourier": fourier, "nap": nap}

if __name__ == "__main__":
    compare_variants(__doc__, {name: (switch_on, 0.0) for name, switch_on in VARIANTS.items()})
