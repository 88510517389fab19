"""End-to-end runs of ``nested-ac train`` and ``nested-ac list``, and every kind of bad input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stable_baselines3 import PPO

from nested_ac.config import resolve_config
from tests.conftest import FAST, read_scalars

EXPECTED_TAGS = {
    "episode/return",
    "episode/length",
    "rollout/ep_rew_mean",
    "rollout/ep_len_mean",
    "task/index",
    "time/sps",
    "time/fps",
    "train/loss",
    "train/value_loss",
    "train/policy_gradient_loss",
    "train/entropy_loss",
    "train/approx_kl",
    "train/explained_variance",
    "train/learning_rate",
    "train/grad_norm",
    "plasticity/actor/dormant",
    "plasticity/actor/srank",
    "plasticity/critic/erank",
    "plasticity/critic/weight_mean_abs",
    "plasticity/actor/dist_from_init",
    "plasticity/policy_entropy",
    "continual/R",
    "continual/P",
    "continual/P_late",
    "continual/slide",
}


def test_train_smoke_writes_events_config_and_model(cli, tmp_path):
    code, out, err = cli(
        "train",
        "--steps",
        "4096",
        "--n-envs",
        "4",
        "--seed",
        "3",
        "--run-dir",
        str(tmp_path),
        "--name",
        "smoke",
        "--set",
        "env.schedule.every=1024",
        *FAST,
    )
    assert code == 0, err
    run_dir = tmp_path / "smoke"
    assert str(run_dir) in out
    assert (run_dir / "model.zip").is_file()

    scalars = read_scalars(run_dir)
    assert EXPECTED_TAGS <= set(scalars)
    tasks = [value for _, value in scalars["task/index"]]
    assert tasks == sorted(tasks) and tasks[0] == 0 and {1, 2, 3} <= set(tasks)  # a task per 1024 steps
    assert all(value > 0 for _, value in scalars["time/sps"])

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [phase[2] for phase in summary["phases"]] == [0, 1, 2, 3] and len(summary["R"]) == 4
    assert summary["R_ref"] == summary["R"][0] and summary["slide"] is not None
    assert [step for step, _ in scalars["continual/R"]] == [1024, 2048, 3072, 4096]
    # The closing lines: what the run learned, R_k of each task and P_late, and a command that opens it.
    R = ", ".join(f"{r:.1f}" for r in summary["R"])
    assert f"return at the end of each of 4 tasks (R_k): {R}; P_late {summary['P_late']:.2f}\n" in out
    view = out.split("(view: ")[1].split(" --logdir ")[0]
    assert shutil.which(view) or Path(view).is_file(), view  # the venv's tensorboard, runnable as printed

    saved = resolve_config(run_dir / "config.yaml")
    assert saved.seed == 3 and saved.env.n_envs == 4 and saved.ppo.n_epochs == 2
    assert saved.env.schedule.every == 1024 and saved.name == "smoke" and saved.steps == 4096
    # The resolved config round-trips exactly.
    (tmp_path / "again.yaml").write_text((run_dir / "config.yaml").read_text())
    assert resolve_config(tmp_path / "again.yaml").to_dict() == saved.to_dict()


def test_the_closing_line_shows_the_first_and_last_tasks_of_a_long_run():
    from nested_ac.cli import learned

    summary = {"R": [500.0, None, *range(300, 327)], "P_late": 0.612}
    assert learned(summary) == (
        "return at the end of each of 29 tasks (R_k): 500.0, —, 300.0, 301.0, …, 323.0, 324.0, 325.0, 326.0; "
        "P_late 0.61"
    )
    assert learned({"R": [123.44], "P_late": None}) == "return at the end of the run (R_1): 123.4"


def test_config_file_reruns_the_same_run(cli, tmp_path):
    args = ("--steps", "1024", "--n-envs", "2", "--run-dir", str(tmp_path), "--name", "a", *FAST)
    assert cli("train", *args)[0] == 0
    assert cli("train", "--config", str(tmp_path / "a" / "config.yaml"))[0] == 0
    first, second = PPO.load(tmp_path / "a" / "model.zip"), PPO.load(tmp_path / "a_1" / "model.zip")
    for p, q in zip(first.policy.parameters(), second.policy.parameters(), strict=True):
        assert torch.equal(p, q)


def test_existing_run_directory_is_never_overwritten(cli, tmp_path):
    args = ("--steps", "256", "--n-envs", "2", "--run-dir", str(tmp_path), "--name", "same", *FAST)
    assert cli("train", *args)[0] == 0
    marker = tmp_path / "same" / "marker"
    marker.write_text("keep me")
    assert cli("train", *args)[0] == 0
    assert cli("train", *args)[0] == 0
    assert marker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same", "same_1", "same_2"]
    assert resolve_config(tmp_path / "same_2" / "config.yaml").name == "same_2"


def test_stationary_gymnasium_env_trains(cli, tmp_path):
    code, _, err = cli(
        "train", "--env", "CartPole-v1", "--steps", "512", "--n-envs", "2", "--run-dir", str(tmp_path), *FAST
    )
    assert code == 0, err
    assert resolve_config(tmp_path / "ppo-adam-CartPole-v1-s0" / "config.yaml").env.schedule.every == 0


@pytest.mark.parametrize(
    "topic, expected",
    [
        ("envs", "nested_ac/PermutedCartPole-v0"),
        ("agents", "ppo"),
        ("optimizers", "adam"),
    ],
)
def test_list(cli, topic, expected):
    code, out, _ = cli("list", topic)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith(expected))
    assert len(line.split()) > 2  # a name and a description


def test_list_tools_names_every_intervention_and_the_architectures(cli):
    code, out, _ = cli("list", "tools")
    assert code == 0
    names = {line.split()[0] for line in out.splitlines() if line and not line.startswith(("Write", "Arch"))}
    assert {"cbp", "redo", "nap", "reset", "inject", "parseval", "weight-clipping", "cchain"} <= names
    architectures = next(line for line in out.splitlines() if line.startswith("Architectures"))
    assert "network.layer_norm" in architectures and "crelu" in architectures and "fourier" in architectures


def test_console_script_is_installed():
    script = shutil.which("nested-ac") or str(__import__("pathlib").Path(sys.executable).parent / "nested-ac")
    result = subprocess.run([script, "list", "agents"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "ppo" in result.stdout


BAD_INPUTS = [
    (["--env", "PermutedCartPol-v0"], "'PermutedCartPol-v0'; valid choices: nested_ac/PermutedCartPole-v0"),
    (["--env", "nopkg_xyz:Env-v0"], "cannot import module 'nopkg_xyz'"),
    (["--agent", "ppp"], "unknown agent 'ppp'; valid choices: ppo"),
    (["--optimizer", "adamm"], "unknown optimizer 'adamm'; valid choices: adam"),
    (["--steps", "0"], "steps must be a positive integer, got 0"),
    (["--steps", "-5"], "steps must be a positive integer, got -5"),
    (["--steps", "many"], "config key 'steps' expects int, got 'many'"),
    (["--n-envs", "0"], "env.n_envs must be a positive integer, got 0"),
    (["--set", "ppo.n_epoch=3"], "key 'ppo.n_epoch'; valid keys in section 'ppo': ppo.n_epochs"),
    (["--set", "bogus=1"], "unknown config key 'bogus'"),
    (["--set", "ppo.n_epochs=many"], "config key 'ppo.n_epochs' expects int, got 'many'"),
    (["--set", "ppo.learning_rate=fast"], "config key 'ppo.learning_rate' expects float"),
    (["--set", "network.actor=64"], "config key 'network.actor' expects a list of int"),
    (["--set", "novalue"], "--set expects key=value"),
    (["--set", "network.activation=sigmoidal"], "unknown activation 'sigmoidal'"),
    (["--env", "CartPole-v1", "--set", "env.schedule.every=100"], "has no set_task"),
    (
        ["--set", "env.schedule.kind=sometimes"],
        "unknown schedule kind 'sometimes'; valid choices: cyclic, every, explicit, random",
    ),
    (["--set", "checkpoint.every=-1"], "checkpoint.every must be >= 0 (0 = only on an interrupt), got -1"),
    (["--set", "checkpoint.keep=0"], "checkpoint.keep must be a positive integer, got 0"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--seed", "-1"], "seed must be an integer in 0 … 4294967295, got -1"),
    (["--seed", str(2**32)], "seed must be an integer in 0 … 4294967295, got 4294967296"),
    (["--name", "../escape"], "name must be a single directory name (no '/', not '.' or '..'), got '../e"),
    (["--name", "a/b"], "name must be a single directory name"),
    (["--name", ".."], "name must be a single directory name"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(args) for args, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_exit_2_nothing_written(cli, tmp_path, args, message):
    code, out, err = cli("train", "--steps", "256", "--run-dir", str(tmp_path / "runs"), *FAST, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [path for path in tmp_path.rglob("*") if path != tmp_path / "runs"] == []  # nothing, anywhere


@pytest.mark.parametrize(
    "text, message",
    [
        ("ppo: {n_steps: [1, 2", "malformed YAML in"),
        ("- just\n- a list\n", "must hold a mapping of keys, got list"),
        ("ppo:\n  clip: 0.1\n", "unknown config key 'ppo.clip'"),
    ],
)
def test_bad_config_file(cli, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code, _, err = cli("train", "--config", str(config), "--run-dir", str(tmp_path / "runs"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_missing_config_file(cli, tmp_path):
    code, _, err = cli("train", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read config file" in err


def test_negative_return_env_measures_plasticity_above_its_floor(cli, tmp_path):
    args = ("--env", "nested_ac/DriftingPendulum-v0", "--steps", "8192", "--n-envs", "2")
    schedule = ("--set", "env.schedule.every=2048")  # 200-step episodes end in every phase's last 10 %
    code, _, err = cli("train", *args, *schedule, "--run-dir", str(tmp_path), "--name", "pend", *FAST)
    assert code == 0, err
    summary = json.loads((tmp_path / "pend" / "summary.json").read_text())
    floor = summary["R_min"]
    assert floor == pytest.approx(-200 * (math.pi**2 + 0.1 * 8**2 + 0.001 * 2**2))
    R, P = summary["R"], summary["P"]
    assert floor < R[0] < 0 and floor < R[1] < 0  # P would be undefined against a floor of 0
    assert P == pytest.approx([(r - floor) / (R[0] - floor) for r in R])
    # Four phases: the slide and late/early are numbers, ratios of the same shifted returns as P.
    assert len(R) == 4 and summary["slide"] == pytest.approx((R[3] - floor) / (R[1] - floor))
    assert summary["late_early"] == pytest.approx((R[3] - floor) / (R[0] - floor))
