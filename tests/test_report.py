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


def test_report_on_two_real_runs(cli, runs, tmp_path):
    code, out, err = cli("report", str(runs), "--out", str(tmp_path / "report"))
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"adam", "cbp"} and "| 2 |" in rows["adam"]
    adam_R1 = [json.loads((runs / "adam" / f"seed{s}" / "summary.json").read_text())["R"][0] for s in (0, 1)]
    assert f"{sum(adam_R1) / 2:.2f} [" in rows["adam"]  # the mean R_1 across seeds, with its CI
    assert "R_ref: nested_ac/PermutedCartPole-v0" in text  # one reference: the PPO-Adam group's
    for name in ("returns.png", "diagnostics.png"):
        assert (tmp_path / "report" / name).stat().st_size > 10_000 and f"]({name})" in text


def test_truncated_event_file_is_skipped_and_said(cli, runs, tmp_path):
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(runs / "adam", damaged / "adam")
    (event_file,) = (damaged / "adam" / "seed1").glob("events.out.tfevents.*")
    event_file.write_bytes(event_file.read_bytes()[:-7])
    code, _, err = cli("report", str(damaged))
    assert code == 0, err
    text = (damaged / "report" / "report.md").read_text()
    assert "| adam | 2 |" in text and "truncated or corrupt" in text and "seed1" in err


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
    assert list(refs.values()) == [300.0] and notes == []
    assert list(references(groups, "ppo-upgd")[0].values()) == [200.0]
