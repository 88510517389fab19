"""nested-ac report on two tiny real runs, and its bad input."""

from __future__ import annotations

import json

import pytest

from nested_ac.config import resolve_config
from nested_ac.train import train

SMALL = {
    "steps": 2048,
    "env.n_envs": 2,
    "ppo.n_steps": 128,
    "ppo.batch_size": 128,
    "ppo.n_epochs": 1,
    "env.schedule.every": 512,
    "progress_bar": False,
    "report": False,
    "diagnostics.every": 1,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for variant, extra in (("adam", {}), ("cbp", {"cbp.enabled": True, "cbp.maturity": 5})):
        for seed in (0, 1):
            train(
                resolve_config(
                    overrides={
                        **SMALL,
                        **extra,
                        "seed": seed,
                        "run_dir": str(root / variant),
                        "name": f"seed{seed}",
                    }
                )
            )
    return root


REPS = ("--reps", "200")  # bootstrap resamples: few, to keep the tests fast


def _rows(text: str) -> dict[str, list[str]]:
    """The table's cells by group."""
    cells = [
        [c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")
    ]
    return {row[0]: dict(zip(cells[0], row, strict=True)) for row in cells[1:]}


def test_report_on_two_real_runs(cli, runs, tmp_path):
    code, out, err = cli("report", str(runs), "--out", str(tmp_path / "report"), *REPS)
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    rows = _rows(text)
    assert set(rows) >= {"adam", "cbp"} and rows["adam"]["seeds"] == "2"
    assert "4 runs in 2 groups." in text
    assert _rows(out) == rows  # the terminal shows the table too
    summaries = {
        (v, s): json.loads((runs / v / f"seed{s}" / "summary.json").read_text()) for v in rows for s in (0, 1)
    }
    adam_R1 = [summaries["adam", s]["R"][0] for s in (0, 1)]
    assert rows["adam"]["R_1"].startswith(f"{sum(adam_R1) / 2:.2f} [")  # the mean R_1 across seeds, its CI
    assert "R_ref (baseline): nested_ac/PermutedCartPole-v0" in text  # one reference: the PPO-Adam group's
    # P_late against that shared reference: the IQM of two values is their mean.
    R_ref = sum(adam_R1) / 2
    cbp_p_lates = [sum(summaries["cbp", s]["R"][-2:]) / 2 / R_ref for s in (0, 1)]  # 4 phases: the last 2
    expected = sum(cbp_p_lates) / 2
    assert rows["cbp"]["P_late IQM"].startswith(f"{expected:.2f} [")
    assert rows["adam"]["P(X > base)"] == "baseline" and rows["cbp"]["P(X > base)"].endswith(
        "(2 paired seeds)"
    )
    for name in ("tasks.png", "returns.png", "diagnostics.png"):
        assert (tmp_path / "report" / name).stat().st_size > 10_000 and f"]({name})" in text


def test_one_seed_prints_no_interval(cli, runs, tmp_path):
    import shutil

    for variant in ("adam", "cbp"):
        shutil.copytree(runs / variant / "seed0", tmp_path / "one" / variant / "seed0")
    code, _, err = cli("report", str(tmp_path / "one"), *REPS)
    assert code == 0, err
    rows = _rows((tmp_path / "one" / "report" / "report.md").read_text())
    for row in rows.values():
        assert row["seeds"] == "1" and row["P_late IQM"].endswith("(1 seed: no interval)")
        assert "[" not in "".join(row.values())  # no zero-width "v [v, v]" anywhere
    assert rows["cbp"]["P(X > base)"].endswith("(1 seed: no interval)")


def test_one_run_is_one_group_and_its_row_is_printed(cli, runs, tmp_path):
    code, out, err = cli("report", str(runs / "cbp" / "seed1"), "--out", str(tmp_path / "r"), *REPS)
    assert code == 0, err
    assert "1 run in 1 group." in (tmp_path / "r" / "report.md").read_text()
    assert list(_rows(out)) == ["cbp"] and out.strip().endswith(
        f"report written to {tmp_path / 'r' / 'report.md'}"
    )


def test_truncated_event_file_is_skipped_and_said(cli, runs, tmp_path):
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(runs / "adam", damaged / "adam")
    (event_file,) = (damaged / "adam" / "seed1").glob("events.out.tfevents.*")
    event_file.write_bytes(event_file.read_bytes()[:-7])
    code, _, err = cli("report", str(damaged), *REPS)
    assert code == 0, err
    text = (damaged / "report" / "report.md").read_text()
    assert _rows(text)["adam"]["seeds"] == "2" and "truncated or corrupt" in text and "seed1" in err


def test_no_runs_is_one_clear_line(cli, tmp_path):
    code, _, err = cli("report", str(tmp_path))
    assert code == 2 and "no finished runs" in err and len(err.strip().splitlines()) == 1


def test_unknown_reference_group(cli, runs, tmp_path):
    code, _, err = cli("report", str(runs), "--out", str(tmp_path / "r"), "--reference", "adm")
    assert code == 2 and "no group called 'adm'; groups: adam, cbp" in err


def test_reference_is_default_adam_ppo_not_a_tuned_adam(tmp_path):
    from nested_ac.report import Group, Run, references

    def group(label: str, R_1: float, **overrides) -> Group:
        config = resolve_config(overrides=overrides)
        return Group(label, [Run(tmp_path, config, {"R": [R_1, R_1 / 2]}, {})])

    groups = [
        group("nonstationary-adam", 100.0, **{"optimizer.betas": [0.99, 0.99]}),
        group("ppo-upgd", 200.0, **{"optimizer.name": "upgd"}),
        group("ppo-adam", 300.0),
    ]
    refs, notes = references(groups, None)
    assert [(r.group.label, r.R_ref) for r in refs.values()] == [("ppo-adam", 300.0)] and notes == []
    assert [r.R_ref for r in references(groups, "ppo-upgd")[0].values()] == [200.0]


def test_bad_number_of_resamples(cli, tmp_path):
    code, _, err = cli("report", str(tmp_path), "--reps", "0")
    assert code == 2 and "bootstrap resamples must be a positive integer, got 0" in err


def test_forgetting_is_a_mean_across_seeds_with_its_interval(cli, runs, tmp_path):
    import shutil

    shutil.copytree(runs, tmp_path / "sweep")
    for seed, forgetting in ((0, 100.0), (1, 300.0)):
        path = tmp_path / "sweep" / "adam" / f"seed{seed}" / "summary.json"
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({**summary, "forgetting_mean": forgetting}))
    code, _, err = cli("report", str(tmp_path / "sweep"), *REPS)
    assert code == 0, err
    rows = _rows((tmp_path / "sweep" / "report" / "report.md").read_text())
    assert rows["adam"]["forgetting"] == "200.00 [100.00, 300.00]"
    assert rows["adam"]["P(forgets less)"] == "baseline"
    assert rows["cbp"]["forgetting"] == rows["cbp"]["P(forgets less)"] == "—"  # no task recurs here
    for seed, forgetting in ((0, 50.0), (1, 250.0)):  # cbp forgets less than adam on each seed
        path = tmp_path / "sweep" / "cbp" / f"seed{seed}" / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "forgetting_mean": forgetting}))
    code, _, err = cli("report", str(tmp_path / "sweep"), *REPS)
    assert code == 0, err
    rows = _rows((tmp_path / "sweep" / "report" / "report.md").read_text())
    # P(cbp forgets less): pairs (50 vs 100, 300), (250 vs 100, 300) -> 3 of 4 pairs.
    assert rows["cbp"]["P(forgets less)"].startswith("0.75 [")


def _table(text: str, heading: str) -> dict[str, dict[str, str]]:
    """The cells by group of the first table after ``heading``."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.split("|")[1:-1]])
    return {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[2:]}


def test_a_suite_report_has_a_table_per_world_and_one_across_worlds(cli, runs, tmp_path):
    import shutil

    import yaml

    # The two tiny runs of each variant, copied into two worlds (one env each) with hand-set R_k:
    # P_late = mean of R_3, R_4 over the world's adam R_1. World A: adam 0.5, cbp 0.9 on both seeds;
    # world B: adam 0.5, cbp 0.3.
    returns = {
        ("A", "adam"): [100.0, 100.0, 50.0, 50.0],
        ("A", "cbp"): [100.0, 100.0, 90.0, 90.0],
        ("B", "adam"): [200.0, 200.0, 100.0, 100.0],
        ("B", "cbp"): [200.0, 200.0, 60.0, 60.0],
    }
    envs = {"A": "nested_ac/PermutedCartPole-v0", "B": "nested_ac/DriftingCartPole-v0"}
    for (world, variant), R in returns.items():
        for seed in (0, 1):
            run = tmp_path / "suite" / world / variant / f"seed{seed}"
            shutil.copytree(runs / variant / f"seed{seed}", run)
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["env"]["id"], config["run_dir"] = envs[world], str(run.parent)
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            summary = json.loads((run / "summary.json").read_text())
            (run / "summary.json").write_text(json.dumps({**summary, "R": R}))
    code, _, err = cli("report", str(tmp_path / "suite"), *REPS)
    assert code == 0, err
    report = tmp_path / "suite" / "report"
    text = (report / "report.md").read_text()
    suite = _table(text, "## Across worlds")
    assert suite["adam"]["PermutedCartPole-v0"].startswith("0.50")
    assert suite["cbp"]["PermutedCartPole-v0"].startswith("0.90")
    assert suite["cbp"]["DriftingCartPole-v0"].startswith("0.30")
    assert suite["cbp"]["all worlds: P_late IQM"].startswith("0.60 [")  # IQM of 0.9, 0.9, 0.3, 0.3
    assert suite["cbp"]["P(X > base), all worlds"].startswith("0.50 [")  # (1 + 0) / 2
    assert suite["adam"]["P(X > base), all worlds"] == "baseline"
    world_b = _table(text, "## DriftingCartPole-v0")
    assert world_b["cbp"]["P(X > base)"].startswith("0.00") and world_b["adam"]["P(X > base)"] == "baseline"
    for name in ("profiles.png", "tasks-PermutedCartPole-v0.png", "tasks-DriftingCartPole-v0.png"):
        assert (report / name).stat().st_size > 1000 and f"]({name})" in text
