"""Env steps per second of the vectorized permuted CartPole through the SB3 adapter vs DummyVecEnv.

Both hold 64 copies of ``nested_ac/PermutedCartPole-v0`` built by the trainer's ``make_env`` (fast path on
and off) and step with random actions; the ratio is measured in one process. Target: >= 5x.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nested_ac.config import resolve_config
from nested_ac.train import make_env


def steps_per_second(vectorized: bool, n_envs: int, steps: int) -> float:
    env = make_env(resolve_config(overrides={"env.n_envs": n_envs, "env.vectorized": vectorized}))
    env.reset()
    actions = np.random.default_rng(0).integers(0, 2, size=(steps, n_envs))
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    elapsed = time.perf_counter() - start
    env.close()
    return steps * n_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000, help="vector steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ratios = []
    for round_ in range(args.rounds):
        fast = steps_per_second(True, args.n_envs, args.steps)
        slow = steps_per_second(False, args.n_envs, args.steps)
        ratios.append(fast / slow)
        print(
            f"round {round_}: adapter {fast:,.0f} steps/s, DummyVecEnv {slow:,.0f}, ratio {fast / slow:.1f}"
        )
    median = float(np.median(ratios))
    print(f"median ratio {median:.1f} (target >= 5): {'PASS' if median >= 5 else 'FAIL'}")


if __name__ == "__main__":
    main()
