"""Does the fast engine learn the same as the exact (SB3) one? Final returns on stationary CartPole-v1.

Both engines train through ``nested-ac train`` at the ``collapse`` setting (64 copies × 32 steps, 10 epochs
of minibatches of 512, lr 2e-3, entropy 0.01, 32×32 actor and critic) on stationary ``CartPole-v1``, seeds
0 … n-1 each. A run's final return is the mean return of the episodes that end in the last 10 % of its
steps. Reported: each engine's final returns, the mean difference fast − sb3 and its 95 % bootstrap
interval (10 000 resamples of each engine's seeds); "indistinguishable" when the interval holds 0.

    .venv/bin/python bench/engine_equivalence.py [--steps 150000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from nested_ac.config import resolve_config
from nested_ac.train import train

COLLAPSE_SETTING = [
    "env.id=CartPole-v1",
    "env.n_envs=64",
    "ppo.n_steps=32",
    "ppo.batch_size=512",
    "ppo.n_epochs=10",
    "ppo.learning_rate=2e-3",
    "ppo.ent_coef=0.01",
    "network.actor=[32,32]",
    "network.critic=[32,32]",
    "checkpoint.every=0",
    "progress_bar=false",
]


def final_return(engine: str, seed: int, steps: int, run_dir: str) -> float:
    assignments = [*COLLAPSE_SETTING, f"ppo.engine={engine}", f"seed={seed}", f"steps={steps}"]
    config = resolve_config(None, {"run_dir": run_dir}, assignments)
    result = train(config)
    returns = [episode_return for step, episode_return, _ in result.episodes if step > 0.9 * steps]
    return float(np.mean(returns))


def bootstrap_interval(a: np.ndarray, b: np.ndarray, resamples: int = 10_000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of mean(a) - mean(b), each sample resampled on its own."""
    rng = np.random.default_rng(0)
    diffs = rng.choice(a, (resamples, len(a))).mean(1) - rng.choice(b, (resamples, len(b))).mean(1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150_000)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    finals: dict[str, list[float]] = {"fast": [], "sb3": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for engine in finals:
                finals[engine].append(final_return(engine, seed, args.steps, tmp))
            print(f"seed {seed}: fast {finals['fast'][-1]:.1f}, sb3 {finals['sb3'][-1]:.1f}", flush=True)
    fast, exact = np.array(finals["fast"]), np.array(finals["sb3"])
    low, high = bootstrap_interval(fast, exact)
    verdict = "indistinguishable" if low <= 0 <= high else "DIFFERENT"
    print(
        f"final return: fast {fast.mean():.1f} ± {fast.std(ddof=1):.1f}, sb3 {exact.mean():.1f} ± "
        f"{exact.std(ddof=1):.1f} (mean ± sd over {args.seeds} seeds); difference fast - sb3 "
        f"{fast.mean() - exact.mean():+.1f}, 95 % bootstrap interval [{low:+.1f}, {high:+.1f}]: {verdict}"
    )


if __name__ == "__main__":
    main()
