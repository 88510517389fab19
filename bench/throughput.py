"""Steps per second of ``nested-ac train`` (PPO, Adam) against plain Stable-Baselines3 PPO.

Both sides use the same env (permuted CartPole, same copies and seed), hyperparameters and network, run in
this one process, interleaved, so that the machine's noise hits both alike. Each side is timed end to end
(environment and agent construction, training, saving the model). The framework side adds the task
clock, the episode and throughput callbacks and TensorBoard logging. Target: ratio ≥ 0.95.

    .venv/bin/python bench/throughput.py [--steps 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from agents.ppo import policy_kwargs_from_config
from nested_ac.config import RunConfig
from nested_ac.train import make_env, train


def plain_sb3(config: RunConfig, out_dir: Path) -> float:
    """Seconds for plain SB3 PPO at the settings of ``config``."""
    start = time.perf_counter()
    env = make_vec_env(
        config.env.id, n_envs=config.env.n_envs, seed=config.seed, env_kwargs={"task_seed": config.seed}
    )
    model = PPO(
        "MlpPolicy",
        env,
        **vars(config.ppo),
        policy_kwargs=policy_kwargs_from_config(config),
        seed=config.seed,
        device=config.device,
    )
    model.learn(total_timesteps=config.steps)
    model.save(out_dir / "plain.zip")
    env.close()
    return time.perf_counter() - start


def framework(config: RunConfig, out_dir: Path) -> float:
    """Seconds for ``nested-ac train`` at ``config``."""
    config.run_dir = str(out_dir)
    start = time.perf_counter()
    train(config)
    return time.perf_counter() - start


def bench_config(steps: int) -> RunConfig:
    """The benchmark setting: defaults (permuted CartPole, 8 copies, 256 steps, batch 256, 10 epochs), four
    tasks over the run, no progress bar."""
    config = RunConfig(steps=steps, progress_bar=False)
    config.env.schedule.every = steps // 4
    return config


def compare_configs(
    baseline: RunConfig, variant: RunConfig, labels: tuple[str, str], rounds: int, target: float
) -> float:
    """Median ratio of steps per second, variant / baseline, both through ``nested-ac train``, interleaved
    for ``rounds`` rounds in this process; prints every round and PASS/FAIL against ``target``."""
    make_env(baseline).close()  # warm imports and registrations before timing
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            base = framework(copy.deepcopy(baseline), Path(tmp))
            ours = framework(copy.deepcopy(variant), Path(tmp))
            ratios.append(base / ours)
            print(
                f"round {round_ + 1}: {labels[0]} {baseline.steps / base:,.0f} steps/s, "
                f"{labels[1]} {variant.steps / ours:,.0f} steps/s, ratio {base / ours:.3f}"
            )
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio >= target else "FAIL"
    print(f"median throughput ratio {labels[1]} / {labels[0]}: {ratio:.3f} ({verdict}: target >= {target})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = bench_config(args.steps)
    config.env.vectorized = False  # SB3's DummyVecEnv on both sides: the same env, only the framework differs
    make_env(config).close()  # warm imports and registrations before timing
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            plain = plain_sb3(config, Path(tmp))
            ours = framework(config, Path(tmp))
            ratios.append(plain / ours)
            print(
                f"round {round_ + 1}: plain SB3 {args.steps / plain:,.0f} steps/s, "
                f"nested-ac {args.steps / ours:,.0f} steps/s, ratio {plain / ours:.3f}"
            )
    ratio = statistics.median(ratios)
    print(
        f"median throughput ratio nested-ac / plain SB3: {ratio:.3f} "
        f"({'PASS' if ratio >= 0.95 else 'FAIL'}: target >= 0.95)"
    )


if __name__ == "__main__":
    main()
