"""UPGD in training: the CLI choices, the utility tags, the nested agent, bad input, exact resume."""

from __future__ import annotations

import signal

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nested_ac.config import resolve_config
from nested_ac.train import train
from tests.conftest import FAST, read_scalars
from tests.test_reliability import assert_same_final_run, cli_args, interrupt_at, small_config


def test_upgd_run_logs_utilities_per_network(cli, tmp_path):
    code, _, err = cli(
        "train",
        "--optimizer",
        "upgd",
        "--steps",
        "1024",
        "--n-envs",
        "2",
        "--run-dir",
        str(tmp_path),
        "--name",
        "upgd",
        "--set",
        "optimizer.log_every=1",
        *FAST,
    )
    assert code == 0, err
    scalars = read_scalars(tmp_path / "upgd")
    for network in ("actor", "critic"):
        means = [value for _, value in scalars[f"upgd/{network}/utility_mean"]]
        fractions = [value for _, value in scalars[f"upgd/{network}/frac_above_half"]]
        assert means and all(0 < value < 1 for value in means)
        assert all(0 <= value <= 1 for value in fractions)
    (event_file,) = (tmp_path / "upgd").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(event_file))
    accumulator.Reload()
    assert "upgd/actor/utility_hist" in accumulator.Tags()["histograms"]


def test_upgd_sgd_and_nested_agent_train(cli, tmp_path):
    for args in (["--optimizer", "upgd-sgd"], ["--optimizer", "upgd", "--agent", "nested-ppo"]):
        code, _, err = cli(
            "train", *args, "--steps", "512", "--n-envs", "2", "--run-dir", str(tmp_path), *FAST
        )
        assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "nested-ppo-upgd-PermutedCartPole-v0-s0",
        "ppo-upgd-sgd-PermutedCartPole-v0-s0",
    ]


def test_bad_upgd_hyperparameter_is_a_config_error(cli, tmp_path):
    code, _, err = cli(
        "train",
        "--optimizer",
        "upgd",
        "--set",
        "optimizer.beta_utility=1.5",
        "--run-dir",
        str(tmp_path),
        *FAST,
    )
    assert code == 2 and "optimizer 'upgd': beta_utility must be in [0.0, 1.0), got 1.5" in err
    assert not any(tmp_path.iterdir())


def test_interrupted_upgd_run_resumes_exactly(cli, tmp_path, monkeypatch):
    reference = train(small_config(tmp_path, "reference", **{"optimizer.name": "upgd"})).run_dir
    config = small_config(tmp_path, "run", **{"optimizer.name": "upgd"})
    interrupt_at(monkeypatch, 3000, signal.SIGTERM)
    code, _, err = cli("train", "--no-progress", "--optimizer", "upgd", *cli_args(config))
    assert code == 143, err
    monkeypatch.undo()
    code, _, err = cli("train", "--resume", str(tmp_path / "run"))
    assert code == 0, err
    assert_same_final_run(tmp_path / "run", reference)


def test_upgd_preset_sets_the_papers_settings_and_flags_override_it(cli, tmp_path):
    code, out, _ = cli("list", "presets")
    assert code == 0 and "upgd-ppo" in out and "factor 2" in out
    code, _, err = cli(
        "train",
        "--preset",
        "upgd-ppo",
        "--steps",
        "256",
        "--n-envs",
        "2",
        "--run-dir",
        str(tmp_path),
        "--name",
        "p",
        "--set",
        "optimizer.sigma=0.01",
        *FAST,
    )
    assert code == 0, err
    config = resolve_config(tmp_path / "p" / "config.yaml")
    assert (config.optimizer.name, config.ppo.learning_rate, config.optimizer.weight_decay) == (
        "upgd",
        6e-4,
        1e-3,
    )
    assert config.optimizer.sigma == 0.01


def test_unknown_preset(cli, tmp_path):
    code, _, err = cli("train", "--preset", "upgd-pp", "--run-dir", str(tmp_path))
    assert code == 2 and "unknown preset 'upgd-pp'; valid choices: upgd-ppo" in err
