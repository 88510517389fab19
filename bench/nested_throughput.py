"""Steps per second of ``nested-ac train --agent nested-ppo`` (K = 2 critics) against ``--agent ppo``.

Both sides run ``nested_ac.train.train`` at identical settings (permuted CartPole, 8 copies, 256 steps,
batch 256, 10 epochs, Adam, same seed), interleaved in this one process so that the machine's noise hits
both alike; each is timed end to end. The nested side adds the outer critic's forward and backward pass on
every minibatch and the per-update diagnostics. Target: median ratio nested-ppo / ppo ≥ 0.8.

    .venv/bin/python bench/nested_throughput.py [--steps 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch
from throughput import framework

from nested_ac.config import RunConfig
from nested_ac.train import make_env

TARGET = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ppo = RunConfig(steps=args.steps, progress_bar=False)
    ppo.env.schedule.every = args.steps // 4
    nested = copy.deepcopy(ppo)
    nested.agent, nested.nested.levels = "nested-ppo", 2
    make_env(ppo).close()  # warm imports and registrations before timing
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            plain = framework(copy.deepcopy(ppo), Path(tmp))
            ours = framework(copy.deepcopy(nested), Path(tmp))
            ratios.append(plain / ours)
            print(
                f"round {round_ + 1}: ppo {args.steps / plain:,.0f} steps/s, "
                f"nested-ppo (K=2) {args.steps / ours:,.0f} steps/s, ratio {plain / ours:.3f}"
            )
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"median throughput ratio nested-ppo / ppo: {ratio:.3f} ({verdict}: target >= {TARGET})")


if __name__ == "__main__":
    main()
