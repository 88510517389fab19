"""Steps per second of ``nested-ac train`` (PPO, Adam) against plain Stable-Baselines3 PPO.

Both sides use the same env (permuted CartPole, same copies and seed), hyperparameters and network, run in
this one process, interleaved, so that the machine's noise hits both alike. Each side is timed end to end
(environment and agent construction, training, saving the model). The framework side adds the task
clock, the episode and throughput callbacks and TensorBoard logging (not the report a lone run writes when
it ends: see ``bench_config``). Target: ratio ≥ 0.95.

    .venv/bin/python bench/throughput.py [--steps 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from nested_ac.build import sb3_ppo_kwargs
from nested_ac.config import RunConfig
from nested_ac.train import train


def plain_sb3(config: RunConfig, out_dir: Path) -> float:
    """Seconds for plain SB3 PPO at the settings of ``config``."""
    start = time.perf_counter()
    env = make_vec_env(
        config.env.id, n_envs=config.env.n_envs, seed=config.seed, env_kwargs={"task_seed": config.seed}
    )
    kwargs = sb3_ppo_kwargs(config)
    kwargs["policy_kwargs"]["optimizer_class"] = torch.optim.Adam  # SB3's own Adam
    model = PPO("MlpPolicy", env, **kwargs)
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
    tasks over the run, no progress bar, and no lone run's report (written once when a run ends, not part
    of training: ``bench/report_cost.py`` measures it)."""
    config = RunConfig(steps=steps, progress_bar=False, report=False)
    config.env.schedule.every = steps // 4
    return config


def warm_up(*configs: RunConfig, out_dir: Path) -> None:
    """A short untimed run of each config: the first training in a process is slower (lazy imports,
    allocator and kernel warm-up), which would favour whichever side runs second."""
    for config in configs:
        short = copy.deepcopy(config)
        short.steps = 4096
        framework(short, out_dir)


def compare_configs(
    baseline: RunConfig, variant: RunConfig, labels: tuple[str, str], rounds: int, target: float
) -> float:
    """Median ratio of steps per second, variant / baseline, both through ``nested-ac train``, interleaved
    for ``rounds`` rounds in this process; prints every round and PASS/FAIL against ``target``."""
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        warm_up(baseline, variant, out_dir=Path(tmp))
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


def compare_variant(
    doc: str,
    labels: tuple[str, str],
    target: float,
    variant: Callable[[RunConfig], None],
    baseline: Callable[[RunConfig], None] = lambda config: None,
    steps: int = 50_000,
) -> None:
    """The command line of a framework-vs-framework benchmark: ``--steps``, ``--rounds``; the baseline and
    the variant are :func:`bench_config` changed in place by ``baseline`` and ``variant``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base, ours = bench_config(args.steps), bench_config(args.steps)
    baseline(base)
    variant(ours)
    compare_configs(base, ours, labels, args.rounds, target)


def compare_variants(
    doc: str,
    variants: dict[str, tuple[Callable[[RunConfig], None], float]],
    flag: str = "--variants",
    steps: int = 50_000,
) -> None:
    """The command line of a benchmark of several variants against plain PPO: ``--steps``, ``--rounds`` and
    ``flag`` (which of ``variants`` to run, all by default); each variant, ``name: (switch_on, target)``, is
    :func:`bench_config` changed in place by ``switch_on`` and compared with the unchanged one in turn."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(flag, nargs="+", choices=list(variants), default=list(variants), dest="chosen")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.chosen:
        switch_on, target = variants[name]
        base, ours = bench_config(args.steps), bench_config(args.steps)
        switch_on(ours)
        compare_configs(base, ours, ("ppo", f"ppo + {name}"), args.rounds, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = bench_config(args.steps)
    config.env.vectorized = False  # SB3's DummyVecEnv on both sides: the same env, only the framework differs
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        short = copy.deepcopy(config)
        short.steps = 4096
        plain_sb3(short, Path(tmp))  # untimed, as warm_up: the first training in a process is slower
        warm_up(config, out_dir=Path(tmp))
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
