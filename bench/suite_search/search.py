"""The collapse suite's world search, stage A then stage B, with the criteria of README.md and no choice made
by hand between them: PPO-Adam alone, search seeds 200-203.

Stage A (``stage-a.yaml``) sets each base task's task length L; stage B (written here as ``stage-b.yaml``)
runs every candidate world of the base tasks that passed for n tasks of L steps (n·L = 3M) and admits the
worlds where a fresh agent learns the first task and PPO-Adam collapses (README.md, "Stage B"). Writes
``results.md`` and ``results.json`` (and stage B's report) into ``--dir``.

    PYTHONUNBUFFERED=1 .venv/bin/python bench/suite_search/search.py --workers 2 --dir /tmp/suite-search
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import yaml

from nested_ac.continual import iqm_and_mean, p_late, plasticity_ratios
from nested_ac.envs import NONSTATIONARY_ENVS
from nested_ac.report import write_report
from nested_ac.rundir import SUMMARY_FILE, read_json
from nested_ac.sweep import load_experiment, run_sweep
from nested_ac.train import library_versions

HERE = Path(__file__).parent
SOLVED = {  # README.md's solved scores
    "CartPole": 475.0,
    "Acrobot": -100.0,
    "Pendulum": -200.0,
    "MountainCar": -110.0,
    "MountainCarContinuous": 90.0,
}
FRACTION = 0.9  # of the way from floor to solved
LENGTHS = (100_000, 200_000, 300_000)
RUN_STEPS = 3_000_000
COLLAPSED = 0.7
SUITE_SLOTS = 3  # worlds besides permuted CartPole that fit in the suite's 2 hours
CARTPOLE_LENGTH = 100_000  # collapse's


def floor(task: str) -> float:
    return NONSTATIONARY_ENVS[f"nested_ac/Permuted{task}-v0"].return_floor or 0.0


def threshold(task: str) -> float:
    return floor(task) + FRACTION * (SOLVED[task] - floor(task))


ROUNDS = {  # the kinds of change each round added (README.md)
    1: ("Permuted", "ActionPermuted", "ActionFlipped", "Drifting"),
    2: ("Remapped",),
}


def candidates(task: str) -> list[tuple[int, str]]:
    """The candidate worlds of a base task with their round (README.md); not PermutedCartPole, the suite's
    first world already."""
    return [
        (round_, f"{prefix}{task}-v0")
        for round_, prefixes in ROUNDS.items()
        for prefix in prefixes
        if f"nested_ac/{prefix}{task}-v0" in NONSTATIONARY_ENVS and f"{prefix}{task}" != "PermutedCartPole"
    ]


def sweep(path: Path, directory: Path, workers: int) -> float:
    start = time.perf_counter()
    unfinished = run_sweep(load_experiment(path, directory), workers)
    if unfinished:
        raise SystemExit("unfinished runs:\n" + "\n".join(unfinished))
    return time.perf_counter() - start


def stage_a(directory: Path, workers: int) -> tuple[dict, float]:
    """README.md's task-length rule: R_1 after L steps of the first task, for L = 100k, then 200k and 300k
    for the base tasks whose mean R_1 is still below the threshold."""
    template = yaml.safe_load((HERE / "stage-a.yaml").read_text())
    results: dict[str, dict] = {
        v["name"]: {"R_1": {}, "mean_R_1": {}, "threshold": threshold(v["name"]), "task_length": None}
        for v in template["variants"]
    }
    directory.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for length in LENGTHS:
        waiting = [v for v in template["variants"] if results[v["name"]]["task_length"] is None]
        if not waiting:
            break
        path = directory / f"stage-a-{length // 1000}k.yaml"
        path.write_text(yaml.safe_dump({**template, "steps": length, "variants": waiting}, sort_keys=False))
        seconds += sweep(path, directory / f"{length // 1000}k", workers)
        for variant in waiting:
            result = results[variant["name"]]
            runs = sorted((directory / f"{length // 1000}k" / variant["name"]).glob("seed*"))
            firsts = [read_json(run, SUMMARY_FILE)["R"][0] for run in runs]
            result["R_1"][str(length)] = firsts
            result["mean_R_1"][str(length)] = float(np.mean([math.nan if r is None else r for r in firsts]))
            if result["mean_R_1"][str(length)] >= result["threshold"]:
                result["task_length"] = length
    results["CartPole"] = {"task_length": CARTPOLE_LENGTH, "threshold": threshold("CartPole")}
    return results, seconds


def write_stage_b(lengths: dict[str, int], path: Path) -> list[tuple[int, str, str]]:
    """stage-b.yaml: every candidate of each base task with a task length; returns (round, task, world)."""
    stage_a = yaml.safe_load((HERE / "stage-a.yaml").read_text())
    worlds = [(round_, task, world) for task in lengths for round_, world in candidates(task)]
    experiment = {
        "name": "suite-search-b",
        "steps": RUN_STEPS,
        "seeds": stage_a["seeds"],
        "base": stage_a["base"],
        "variants": [
            {
                "name": world.removesuffix("-v0"),
                "set": {"env.id": f"nested_ac/{world}", "env.schedule.every": lengths[task]},
            }
            for _, task, world in worlds
        ],
    }
    header = (
        "# Suite search, stage B: every candidate world of the base tasks that passed stage A, n tasks of\n"
        "# L steps (n*L = 3M), PPO-Adam at collapse's shared setting, search seeds 200-203 (by search.py).\n"
    )
    path.write_text(header + yaml.safe_dump(experiment, sort_keys=False))
    return worlds


def judge(round_: int, task: str, world: str, run_dirs: list[Path]) -> dict:
    """README.md's two admission criteria for one world."""
    summaries = [read_json(run, SUMMARY_FILE) for run in run_dirs]
    R = [np.array([math.nan if r is None else r for r in s["R"]], dtype=float) for s in summaries]
    firsts = [float(r[0]) for r in R]
    R_ref = float(np.mean(firsts))
    R_min = floor(task)
    every_R = all(not np.isnan(r).any() for r in R)
    p_lates = [p_late(plasticity_ratios(r, R_ref, R_min)) if R_ref > R_min else math.nan for r in R]
    iqm, mean = iqm_and_mean(p_lates)
    learns = R_ref >= threshold(task)
    collapses = every_R and iqm.high is not None and iqm.high <= COLLAPSED
    return {
        "round": round_,
        "task": task,
        "world": world,
        "seeds": [run.name for run in run_dirs],
        "R_1": firsts,
        "R_1_mean": R_ref,
        "R_1_threshold": threshold(task),
        "tasks": len(R[0]),
        "missing_R": [int(np.isnan(r).sum()) for r in R],
        "R": [[None if math.isnan(v) else round(float(v), 2) for v in r] for r in R],
        "P_late": p_lates,
        "P_late_IQM": [iqm.value, iqm.low, iqm.high],
        "P_late_mean": [mean.value, mean.low, mean.high],
        "learns_first_task": learns,
        "collapses": collapses,
        "passes": learns and collapses,
    }


def admit(verdicts: list[dict]) -> None:
    """README.md's budget rule: at most SUITE_SLOTS admitted, different base tasks first."""
    passing = sorted((v for v in verdicts if v["passes"]), key=lambda v: v["P_late_IQM"][0])
    best_per_task: dict[str, dict] = {}
    for v in passing:
        if v["task"] != "CartPole":
            best_per_task.setdefault(v["task"], v)
    order = list(best_per_task.values())
    order += [v for v in passing if v["task"] == "CartPole"]
    order += [v for v in passing if v not in order]
    admitted = {v["world"] for v in order[:SUITE_SLOTS]}
    for v in verdicts:
        v["admitted"] = v["world"] in admitted


def fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}"


def markdown(stage_a_results: dict, verdicts: list[dict], seconds: dict[str, float]) -> str:
    lines = ["## Stage A: R_1 after L steps of the first task (PPO-Adam, seeds 200–203)", ""]
    lines += ["| base task | R_1 at 100k (per seed; mean) | at 200k | at 300k | threshold | task length |"]
    lines += ["|---|---|---|---|---|---|"]
    for task, result in stage_a_results.items():
        if "R_1" not in result:
            continue
        cells = [
            ", ".join(fmt(v) for v in result["R_1"][key]) + f"; **{fmt(result['mean_R_1'][key])}**"
            if (key := str(length)) in result["R_1"]
            else "—"
            for length in LENGTHS
        ]
        length = result["task_length"]
        lines.append(
            f"| {task} | {' | '.join(cells)} | {result['threshold']:.1f} "
            f"| {'none: not learnable in 300k' if length is None else f'{length // 1000}k'} |"
        )
    lines += ["", "## Stage B: the candidate worlds (PPO-Adam, seeds 200–203)", ""]
    lines += [
        "| round | world | tasks × L | R_1 per seed | mean R_1 (threshold) | missing R_k | P_late per seed "
        "| P_late IQM [95 % CI] | learns | collapses | admitted |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        iqm = v["P_late_IQM"]
        ci = f"{fmt(iqm[0])} [{fmt(iqm[1])}, {fmt(iqm[2])}]"
        length = RUN_STEPS // v["tasks"]
        lines.append(
            f"| {v['round']} | {v['world']} | {v['tasks']} × {length // 1000}k "
            f"| {', '.join(f'{r:.1f}' for r in v['R_1'])} "
            f"| {v['R_1_mean']:.1f} ({v['R_1_threshold']:.1f}) | {sum(v['missing_R'])} "
            f"| {', '.join(fmt(p) for p in v['P_late'])} | {ci} "
            f"| {'yes' if v['learns_first_task'] else 'no'} | {'yes' if v['collapses'] else 'no'} "
            f"| {'**yes**' if v['admitted'] else ('passes; outside the budget' if v['passes'] else 'no')} |"
        )
    lines += ["", "Wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()) + "."]
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", required=True, help="where the sweeps and the results go")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)

    stage_a_results, seconds_a = stage_a(directory / "stage-a", args.workers)
    lengths = {task: r["task_length"] for task, r in stage_a_results.items() if r["task_length"] is not None}
    worlds = write_stage_b(lengths, directory / "stage-b.yaml")
    seconds_b = sweep(directory / "stage-b.yaml", directory / "stage-b", args.workers)
    verdicts = [
        judge(round_, task, world, sorted((directory / "stage-b" / world.removesuffix("-v0")).glob("seed*")))
        for round_, task, world in worlds
    ]
    admit(verdicts)
    write_report([directory / "stage-b"])
    seconds = {"stage A": seconds_a, "stage B": seconds_b}
    (directory / "results.json").write_text(
        json.dumps(
            {
                "stage_a": stage_a_results,
                "stage_b": verdicts,
                "seconds": seconds,
                "versions": library_versions(),
            },
            indent=1,
        )
    )
    (directory / "results.md").write_text(markdown(stage_a_results, verdicts, seconds))
    print((directory / "results.md").read_text())


if __name__ == "__main__":
    main()
