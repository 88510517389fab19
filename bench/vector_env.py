"""Env steps per second of the numpy-vectorized worlds through the SB3 adapter vs Gymnasium's envs in
SB3's ``DummyVecEnv``.

For each world, both forms hold 64 copies built by the trainer's ``make_env`` (fast path on and off) and
step with the same random actions; the ratio is measured in one process, the forms interleaved round by
round. Target: >= 5x for every world.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nested_ac.config import resolve_config
from nested_ac.train import make_env

WORLDS = (
    "nested_ac/PermutedCartPole-v0",
    "nested_ac/PermutedAcrobot-v0",
    "nested_ac/PermutedPendulum-v0",
    "nested_ac/PermutedMountainCar-v0",
    "nested_ac/PermutedMountainCarContinuous-v0",
)


def steps_per_second(env_id: str, vectorized: bool, n_envs: int, steps: int) -> float:
    overrides = {"env.id": env_id, "env.n_envs": n_envs, "env.vectorized": vectorized}
    env = make_env(resolve_config(overrides=overrides))
    env.reset()
    env.action_space.seed(0)
    actions = [np.stack([env.action_space.sample() for _ in range(n_envs)]) for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    elapsed = time.perf_counter() - start
    env.close()
    return steps * n_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", action="append", help=f"a world to measure (repeatable; default: {WORLDS})")
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000, help="vector steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    verdicts = []
    for env_id in args.env or WORLDS:
        ratios, fast_rates, slow_rates = [], [], []
        for _ in range(args.rounds):
            fast = steps_per_second(env_id, True, args.n_envs, args.steps)
            slow = steps_per_second(env_id, False, args.n_envs, args.steps)
            ratios.append(fast / slow)
            fast_rates.append(fast)
            slow_rates.append(slow)
        median = float(np.median(ratios))
        verdicts.append(median >= 5)
        print(
            f"{env_id}: adapter {np.median(fast_rates):,.0f} steps/s, "
            f"DummyVecEnv {np.median(slow_rates):,.0f}, "
            f"median ratio {median:.1f} (rounds {', '.join(f'{r:.1f}' for r in ratios)}): "
            f"{'PASS' if median >= 5 else 'FAIL'}"
        )
    print(f"target >= 5x for every world: {'PASS' if all(verdicts) else 'FAIL'}")


if __name__ == "__main__":
    main()
