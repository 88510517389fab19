"""Cost of one optimizer step: AdaptiveUPGD vs torch.optim.Adam (target ≤ 1.6×), UPGD vs SGD (for info).

The network is SB3's default PPO policy for CartPole (separate 64×64 ReLU actor and critic MLPs, 4 inputs,
2 actions: 9,155 weights in 12 tensors). Every optimizer gets its own copy of it with the same gradients
from one backward pass, held fixed. In each round the optimizers run ``--steps`` steps each, interleaved
in alternating order, in this one process; the table reports the medians over ``--rounds`` rounds and the
median of the per-round ratios. AdaptiveUPGD runs with the RL preset (σ = 1e-3, λ = 1e-3, β_u = 0.999),
so the noise and the weight decay are part of the cost. The target is against torch.optim.Adam as built
(on CPU tensors its default is a per-tensor loop); Adam with foreach=True is listed for information. One
CPU thread.

    .venv/bin/python bench/upgd_step.py [--steps 1000] [--rounds 9] [--warmup 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from nested_ac.optim import UPGD, AdaptiveUPGD

TARGET = 1.6

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]

CANDIDATES: dict[str, OptimizerFactory] = {
    "AdaptiveUPGD": lambda params: AdaptiveUPGD(
        params, lr=6e-4, eps=1e-5, weight_decay=1e-3, beta_utility=0.999, sigma=1e-3, seed=0
    ),
    "Adam": lambda params: torch.optim.Adam(params, lr=3e-4, eps=1e-5),
    "Adam(foreach)": lambda params: torch.optim.Adam(params, lr=3e-4, eps=1e-5, foreach=True),
    "UPGD": lambda params: UPGD(params, lr=1e-2, weight_decay=1e-3, beta_utility=0.999, sigma=1e-3, seed=0),
    "SGD": lambda params: torch.optim.SGD(params, lr=1e-2),
}
# (ours, baseline, target ratio or None for information only).
# torch.optim.Adam's default on CPU tensors is its per-tensor loop; its foreach form is shown for information.
COMPARISONS = [
    ("AdaptiveUPGD", "Adam", TARGET),
    ("AdaptiveUPGD", "Adam(foreach)", None),
    ("UPGD", "SGD", None),
]


def default_policy() -> ActorCriticPolicy:
    """SB3's PPO policy for CartPole with 64×64 ReLU actor and critic, gradients of a PPO-like loss set."""
    env = gym.make("CartPole-v1")
    policy = ActorCriticPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 3e-4,
        net_arch={"pi": [64, 64], "vf": [64, 64]},
        activation_fn=torch.nn.ReLU,
    )
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(256, 4, generator=generator)
    actions = torch.randint(0, 2, (256,), generator=generator)
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    (values.pow(2).mean() - log_prob.mean() - 0.01 * entropy.mean()).backward()
    return policy


def seconds_per_step(optimizer: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per optimizer per round")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed steps per optimizer before timing")
    args = parser.parse_args()
    torch.set_num_threads(1)

    policy = default_policy()
    params = list(policy.parameters())
    print(
        f"default PPO network: {sum(p.numel() for p in params):,} weights in {len(params)} tensors; "
        f"torch {torch.__version__}, 1 thread, {args.rounds} rounds x {args.steps} steps"
    )
    optimizers = {}
    for name, make in CANDIDATES.items():
        copy_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for p, q in zip(params, copy_params, strict=True):
            q.grad = p.grad.clone()
        optimizers[name] = make(copy_params)
        for _ in range(args.warmup):
            optimizers[name].step()

    times: dict[str, list[float]] = {name: [] for name in optimizers}
    ratios: dict[tuple[str, str], list[float]] = {(ours, base): [] for ours, base, _ in COMPARISONS}
    for round_index in range(args.rounds):
        order = list(optimizers) if round_index % 2 == 0 else list(reversed(optimizers))
        this_round = {name: seconds_per_step(optimizers[name], args.steps) for name in order}
        for name, seconds in this_round.items():
            times[name].append(seconds)
        for ours, base in ratios:
            ratios[(ours, base)].append(this_round[ours] / this_round[base])

    print(f"\n{'optimizer':<16}{'median µs/step':>16}{'min µs/step':>14}")
    for name, values in times.items():
        print(f"{name:<16}{statistics.median(values) * 1e6:>16.1f}{min(values) * 1e6:>14.1f}")
    print(f"\n{'ratio':<30}{'median':>8}{'min':>8}{'max':>8}  verdict")
    for ours, base, target in COMPARISONS:
        values = ratios[(ours, base)]
        median = statistics.median(values)
        verdict = "(information only)"
        if target is not None:
            verdict = f"{'PASS' if median <= target else 'FAIL'} (target <= {target}x)"
        print(f"{ours + ' / ' + base:<30}{median:>8.2f}{min(values):>8.2f}{max(values):>8.2f}  {verdict}")


if __name__ == "__main__":
    main()
