"""Cost of one optimizer step: AdaptiveUPGD vs torch.optim.Adam (target ≤ 1.6×), UPGD vs SGD (for info).

The network is the default PPO policy for CartPole (separate 64×64 ReLU actor and critic MLPs); the
gradients come from one backward pass and stay fixed; the optimizers alternate in rounds in this one
process and the median ratio of the per-step times is reported.

    .venv/bin/python bench/upgd_step.py [--steps 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from nested_ac.optim import UPGD, AdaptiveUPGD


def default_policy() -> ActorCriticPolicy:
    env = gym.make("CartPole-v1")
    policy = ActorCriticPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 3e-4,
        net_arch={"pi": [64, 64], "vf": [64, 64]},
        activation_fn=torch.nn.ReLU,
    )
    obs = torch.randn(256, 4)
    values, log_prob, entropy = policy.evaluate_actions(obs, torch.randint(0, 2, (256,)))
    (values.pow(2).mean() - log_prob.mean() - entropy.mean()).backward()
    return policy


def seconds_per_step(optimizer: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(20):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def compare(name: str, make_ours, make_baseline, target: float | None, steps: int, rounds: int) -> None:
    ratios, ours_times, base_times = [], [], []
    for _ in range(rounds):
        ours, base = seconds_per_step(make_ours(), steps), seconds_per_step(make_baseline(), steps)
        ratios.append(ours / base)
        ours_times.append(ours)
        base_times.append(base)
    ratio = statistics.median(ratios)
    verdict = "" if target is None else f" ({'PASS' if ratio <= target else 'FAIL'}: target <= {target})"
    print(
        f"{name}: {statistics.median(ours_times) * 1e6:.0f} µs vs "
        f"{statistics.median(base_times) * 1e6:.0f} µs per step, median ratio {ratio:.2f}{verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = list(default_policy().parameters())
    print(f"default PPO network: {sum(p.numel() for p in params):,} weights in {len(params)} tensors")
    compare(
        "AdaptiveUPGD / Adam",
        lambda: AdaptiveUPGD(params, lr=1e-9, seed=0),
        lambda: torch.optim.Adam(params, lr=1e-9, eps=1e-5),
        1.6,
        args.steps,
        args.rounds,
    )
    compare(
        "UPGD / SGD",
        lambda: UPGD(params, lr=1e-9, seed=0),
        lambda: torch.optim.SGD(params, lr=1e-9),
        None,
        args.steps,
        args.rounds,
    )


if __name__ == "__main__":
    main()
