"""NS-Gym (the real ``ns-gym`` package, installed by scripts/setup.sh without its dependencies) through
:func:`nested_ac.envs.from_ns_gym`: its change flags become task boundaries, the run seed seeds its update
functions, the base task's floor is set, and the documented example runs verbatim from a fresh folder."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from nested_ac import envs
from nested_ac.config import resolve_config
from nested_ac.train import train
from tests.conftest import FAST, read_scalars

ns_gym = pytest.importorskip("ns_gym")  # scripts/setup.sh installs it: a skip means a set-up by hand
from ns_gym.schedulers import ContinuousScheduler, PeriodicScheduler  # noqa: E402
from ns_gym.update_functions import IncrementUpdate, RandomWalk  # noqa: E402
from ns_gym.wrappers import NSClassicControlWrapper  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PERIOD = 512  # a copy's own steps between NS-Gym's changes
COPIES = 2


def heavier_pole(task_seed: int = 0) -> envs.NSGymAdapter:
    update = IncrementUpdate(PeriodicScheduler(period=PERIOD), k=0.1)
    ns_env = NSClassicControlWrapper(
        gym.make("CartPole-v1"), {"masspole": update}, change_notification=True, persistent_params=True
    )
    return envs.from_ns_gym(ns_env, seed=task_seed)


if "TestHeavierPole-v0" not in gym.envs.registry:  # the CLI imports this module once more by name
    gym.register("TestHeavierPole-v0", entry_point=heavier_pole)


def test_the_adapter_hands_the_policy_the_state_and_flags_each_change():
    """NS-Gym's flags at the copy's steps P, 2P … (counted over episodes: the run's clock) become
    ``task_changed``; the pole's mass grows by 0.1 at each; the policy sees the 4 state entries."""
    env = heavier_pole()
    assert env.observation_space == gym.make("CartPole-v1").observation_space and env.announces_tasks
    obs, _ = env.reset(seed=3)
    assert obs.shape == (4,)
    changes, masses = [], []
    for step in range(3 * PERIOD + 1):
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.shape == (4,)
        if info["task_changed"]:
            changes.append(step)
        masses.append(env.unwrapped.masspole)
        if terminated or truncated:
            env.reset()
    assert changes == [PERIOD, 2 * PERIOD, 3 * PERIOD]
    assert masses[PERIOD - 1] == pytest.approx(0.2) and masses[PERIOD] == pytest.approx(0.3)  # 0.1 first step


def test_the_run_seed_seeds_nsgyms_update_functions():
    """Copies reset with their own seeds draw the same random walk from the same run seed, another from
    another run seed."""

    def walk(run_seed: int, reset_seed: int) -> list[float]:
        ns_env = NSClassicControlWrapper(
            gym.make("CartPole-v1"),
            {"gravity": RandomWalk(ContinuousScheduler(), sigma=0.1)},
            change_notification=True,
            persistent_params=True,
        )
        env = envs.from_ns_gym(ns_env, seed=run_seed, announce=False)
        env.reset(seed=reset_seed)
        gravities = []
        for _ in range(20):
            _, _, terminated, truncated, info = env.step(0)
            if terminated or truncated:
                env.reset()
            assert "task_changed" not in info  # announce=False: a drift, for metrics.window
            gravities.append(env.unwrapped.gravity)
        return gravities

    assert walk(7, 0) == walk(7, 1) != walk(8, 0)


def test_the_base_tasks_floor_and_refusals():
    acrobot = NSClassicControlWrapper(
        gym.make("Acrobot-v1"),
        {"LINK_MASS_1": IncrementUpdate(PeriodicScheduler(period=100), k=0.1)},
        persistent_params=True,
    )
    assert envs.from_ns_gym(acrobot).return_floor == -500.0 and heavier_pole().return_floor is None
    with pytest.raises(TypeError, match="needs an NS-Gym wrapper"):
        envs.from_ns_gym(gym.make("CartPole-v1"))
    forgetful = NSClassicControlWrapper(
        gym.make("CartPole-v1"), {"masspole": IncrementUpdate(PeriodicScheduler(period=100), k=0.1)}
    )
    with pytest.raises(ValueError, match="persistent_params=True"):
        envs.from_ns_gym(forgetful)


def test_nsgyms_changes_are_the_runs_task_boundaries(tmp_path):
    """Through the trainer: a task boundary at each of NS-Gym's changes, the step before the vector step
    whose copies first ran on the new mass; R_k of every task; the switches in TensorBoard."""
    overrides = {
        "env.id": "tests.test_nsgym:TestHeavierPole-v0",
        "steps": 4 * PERIOD * COPIES,
        "env.n_envs": COPIES,
        "run_dir": str(tmp_path),
        "name": "ns",
        "progress_bar": False,
    }
    sets = [item for item in FAST if "=" in item and not item.startswith("-")]
    result = train(resolve_config(None, overrides, sets))
    boundaries = [(k * PERIOD * COPIES, k) for k in range(4)]
    assert result.switches == boundaries
    assert len(result.summary["R"]) == 4 and None not in result.summary["R"]
    marks = read_scalars(result.run_dir)["task/switch"]
    assert [(step, int(value)) for step, value in marks] == boundaries


def _block(language: str, first_line: str) -> str:
    page = (ROOT / "docs" / "environments.md").read_text()
    for block in re.findall(rf"```{language}\n(.*?)```", page, re.DOTALL):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no {language} block starting with {first_line!r} in docs/environments.md")


def test_the_documented_nsgym_example_runs_verbatim_from_a_fresh_folder(tmp_path):
    (tmp_path / "nsworld.py").write_text(_block("python", "# nsworld.py"))
    commands = [shlex.split(line) for line in _block("bash", "nested-ac train --env nsworld:").splitlines()]
    script = Path(sys.executable).with_name("nested-ac")
    for command in commands:
        result = subprocess.run(
            [str(script), *command[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    tasks, drift = (
        json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        for name in ("heavier", "drifting")
    )
    assert len(tasks["R"]) == 4 and None not in tasks["R"]  # HeavierPole: 4 tasks, one per change
    assert len(drift["R"]) == 1 and len(drift["windows"]["R"]) == 4  # DriftingPole: no tasks, 4 windows
    assert np.isfinite(drift["windows"]["P_late"])
