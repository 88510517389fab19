"""Runs per hour of a sweep with 2 workers against 1 worker, on the same experiment (target ≥ 1.7×).

The experiment: 4 runs (2 variants × 2 seeds) of PPO on permuted CartPole; each sweep writes to its own
temporary directory, so no run is skipped. The two sweeps alternate for ``--rounds`` rounds.

    .venv/bin/python bench/sweep_scaling.py [--steps 60000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from nested_ac.sweep import load_experiment, run_sweep

EXPERIMENT = """
name: scaling
steps: {steps}
seeds: [0, 1]
base:
  env: {{id: nested_ac/PermutedCartPole-v0, n_envs: 8, schedule: {{every: 20000}}}}
variants:
  - name: adam
  - name: adam-4-epochs
    set: {{ppo.n_epochs: 4}}
"""


def seconds_for(workers: int, steps: int, tmp: Path) -> float:
    path = tmp / "scaling.yaml"
    path.write_text(EXPERIMENT.format(steps=steps))
    experiment = load_experiment(path, tmp / f"sweep-{workers}-{time.monotonic_ns()}")
    start = time.perf_counter()
    failures = run_sweep(experiment, workers=workers)
    assert not failures, failures
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            one, two = seconds_for(1, args.steps, Path(tmp)), seconds_for(2, args.steps, Path(tmp))
            ratios.append(one / two)
            print(
                f"round {round_ + 1}: 1 worker {4 * 3600 / one:.0f} runs/h, "
                f"2 workers {4 * 3600 / two:.0f} runs/h, ratio {one / two:.2f}"
            )
    ratio = statistics.median(ratios)
    print(
        f"median runs-per-hour ratio 2 workers / 1 worker: {ratio:.2f} "
        f"({'PASS' if ratio >= 1.7 else 'FAIL'}: target >= 1.7)"
    )


if __name__ == "__main__":
    main()
