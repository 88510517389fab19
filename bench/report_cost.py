"""Seconds that a lone run's own report (``report: true``, the default outside sweeps) adds to it.

The throughput benchmarks leave the report out (it is written once, after training); this measures it as a
user meets it: whole ``nested-ac train`` processes at the default setting, with and without
``--set report=false``, alternating for ``--rounds`` rounds; the median difference of wall-clock seconds is
the report's cost (its imports — matplotlib, scipy through rliable — its bootstrap and its figures).

    .venv/bin/python bench/report_cost.py [--steps 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from collapse_speed import seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    nested_ac = str(Path(sys.executable).parent / "nested-ac")
    costs = []
    with tempfile.TemporaryDirectory() as tmp:
        train = [nested_ac, "train", "--no-progress", "--steps", str(args.steps), "--run-dir", tmp]
        for round_ in range(args.rounds):
            plain, _ = seconds([*train, "--name", f"plain{round_}", "--set", "report=false"])
            reported, _ = seconds([*train, "--name", f"reported{round_}"])
            costs.append(reported - plain)
            print(f"round {round_ + 1}: run {plain:.2f} s, run and its report {reported:.2f} s")
    print(f"median cost of a lone run's report: {statistics.median(costs):.2f} s")


if __name__ == "__main__":
    main()
