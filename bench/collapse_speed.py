"""Env steps per second of ``nested-ac train`` on the ``collapse`` configuration vs plain SB3 PPO.

Whole processes, timed from launch to exit: ``nested-ac train --config <collapse's ppo-adam run>`` (permuted
CartPole on the vectorized env, 64 copies × 32 steps, 10 epochs of minibatches of 512, lr 2e-3, entropy
0.01, 32×32 actor and critic, checkpoints and TensorBoard logging on) against a plain Stable-Baselines3
script with the same hyperparameters and network on ``CartPole-v1`` (SB3's ``make_vec_env``). The sides
alternate for ``--rounds`` rounds (the machine's noise hits both alike); the median ratio of wall-clock
steps per second is reported, and beside it the ratio of CPU time (user + system of the whole process),
which other processes on a shared machine disturb far less. Target: ≥ 1.8× (the goal 2.5×).
``--steps 3000000`` runs the configuration's full length (its task switches and checkpoints included; about
2.5 min a round); ``--engine sb3`` measures the exact engine instead.

    .venv/bin/python bench/collapse_speed.py [--steps 300000] [--rounds 3] [--engine fast|sb3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nested_ac.build import sb3_ppo_kwargs
from nested_ac.sweep import load_experiment

PLAIN_SB3 = """
import sys, torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
torch.set_num_threads(1)
env = make_vec_env("CartPole-v1", n_envs={n_envs}, seed=0)
model = PPO("MlpPolicy", env, seed=0, policy_kwargs={policy_kwargs}, **{ppo})
model.learn(total_timesteps={steps})
model.save(sys.argv[1])
"""


def seconds(command: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system) of running ``command`` to its end."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", choices=("fast", "sb3"), default="fast")
    args = parser.parse_args()
    config = next(run.config for run in load_experiment("collapse").runs if run.variant == "ppo-adam")
    config.steps, config.seed, config.progress_bar, config.ppo.engine = args.steps, 0, False, args.engine
    ppo = {key: value for key, value in sb3_ppo_kwargs(config).items() if key in vars(config.ppo)}
    policy_kwargs = (
        f"dict(net_arch=dict(pi={config.network.actor}, vf={config.network.critic}), "
        f"activation_fn=torch.nn.{'ReLU' if config.network.activation == 'relu' else 'Tanh'})"
    )
    assert config.network.activation == "relu" and config.optimizer.name == "adam"
    script = PLAIN_SB3.format(
        n_envs=config.env.n_envs, policy_kwargs=policy_kwargs, ppo=ppo, steps=args.steps
    )
    bin_dir = Path(sys.executable).parent
    ratios, cpu_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        config.run_dir = tmp
        config_file = Path(tmp) / "collapse.yaml"
        config.save(config_file)
        ours = [str(bin_dir / "nested-ac"), "train", "--no-progress", "--config", str(config_file)]
        plain = [sys.executable, "-c", script, str(Path(tmp) / "plain.zip")]
        for round_ in range(args.rounds):
            (plain_s, plain_cpu), (ours_s, ours_cpu) = seconds(plain), seconds(ours)
            ratios.append(plain_s / ours_s)
            cpu_ratios.append(plain_cpu / ours_cpu)
            print(
                f"round {round_ + 1}: plain SB3 {args.steps / plain_s:,.0f} steps/s, nested-ac "
                f"(engine {args.engine}) {args.steps / ours_s:,.0f} steps/s, ratio {plain_s / ours_s:.2f}; "
                f"CPU time {plain_cpu:.1f} s vs {ours_cpu:.1f} s, ratio {plain_cpu / ours_cpu:.2f}",
                flush=True,
            )
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio >= 1.8 else "FAIL"
    print(
        f"median ratio nested-ac / plain SB3: {ratio:.2f} wall clock ({verdict}: target >= 1.8), "
        f"{statistics.median(cpu_ratios):.2f} CPU time"
    )


if __name__ == "__main__":
    main()
