"""The non-stationary suite: wrappers, schedules, the vector fast path, built-in envs and plug-ins."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from nested_ac import envs
from nested_ac.config import resolve_config
from nested_ac.envs.schedules import make_schedule
from nested_ac.errors import ConfigError
from nested_ac.train import make_env, train
from tests.conftest import FAST, read_scalars


def set_task(env: gym.Env, task: int) -> None:
    env.get_wrapper_attr("set_task")(task)


def rollout(env: gym.Env, actions: list, seed: int = 3) -> tuple[list, list]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return observations, rewards


def test_offset_changes_observation_by_a_fixed_shift_per_task():
    plain, env = gym.make("CartPole-v1"), envs.OffsetObservation(gym.make("CartPole-v1"), 2.0, task_seed=1)
    raw, _ = rollout(plain, [0, 1, 1])
    shifts = {}
    for task in (0, 1, 0):
        set_task(env, task)
        got, _ = rollout(env, [0, 1, 1])
        shift = np.array(got) - np.array(raw)
        np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-5)
        shifts.setdefault(task, shift[0])
        np.testing.assert_allclose(shifts[task], shift[0], atol=1e-6)
    assert not np.allclose(shifts[0], shifts[1])


def test_action_permutation_changes_what_an_action_does():
    plain, env = gym.make("CartPole-v1"), envs.PermuteActions(gym.make("CartPole-v1"), task_seed=0)
    perms = []
    for task in range(6):
        set_task(env, task)
        perm = env.get_wrapper_attr("effect").permutation
        perms.append(tuple(perm))
        got, _ = rollout(env, [0, 0, 1])
        expected, _ = rollout(plain, [int(perm[a]) for a in (0, 0, 1)])
        np.testing.assert_array_equal(got, expected)
    assert {(0, 1), (1, 0)} == set(perms)


def test_continuous_action_sign_flip_and_reward_scale():
    env = envs.FlipActions(gym.make("Pendulum-v1"), task_seed=0)
    signs = set()
    for task in range(8):
        set_task(env, task)
        effect = env.get_wrapper_attr("effect")
        signs.add(float(effect.signs[0]))
        got, _ = rollout(env, [np.array([1.5], dtype=np.float32)] * 3)
        expected, _ = rollout(gym.make("Pendulum-v1"), [effect.signs * np.float32(1.5)] * 3)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert signs == {-1.0, 1.0}
    scaled = envs.ScaleReward(gym.make("CartPole-v1"), low=2.0, high=3.0, flip=0.5, task_seed=0)
    scales = []
    for task in range(8):
        set_task(scaled, task)
        _, rewards = rollout(scaled, [0, 1])
        scale = scaled.get_wrapper_attr("effect").scale
        assert rewards == pytest.approx([scale, scale]) and 2.0 <= abs(scale) <= 3.0
        scales.append(scale)
    assert min(scales) < 0 < max(scales)


def test_drift_sets_the_attribute_and_cartpole_caches():
    env = envs.DriftAttribute(gym.make("CartPole-v1"), "masspole", 0.05, 0.5, task_seed=2)
    values = []
    for task in range(3):
        set_task(env, task)
        cartpole = env.unwrapped
        assert 0.05 <= cartpole.masspole <= 0.5
        assert cartpole.total_mass == pytest.approx(cartpole.masspole + cartpole.masscart)
        assert cartpole.polemass_length == pytest.approx(cartpole.masspole * cartpole.length)
        values.append(cartpole.masspole)
    assert len(set(values)) == 3
    with pytest.raises(ConfigError, match="no numeric attribute 'gravityy'.*gravity.*masspole"):
        envs.DriftAttribute(gym.make("CartPole-v1"), "gravityy", 1.0, 2.0)


def test_slippery_ant_friction_really_changes_in_the_model():
    env = gym.make("nested_ac/SlipperyAnt-v0", task_seed=0)
    model = env.unwrapped.model
    seen = []
    for task in range(5):
        set_task(env, task)
        friction = model.geom_friction[:, 0]
        assert np.all(friction == friction[0]) and 0.02 <= friction[0] <= 2.0
        assert env.get_wrapper_attr("task_parameters") == {"friction": pytest.approx(friction[0])}
        seen.append(float(friction[0]))
    assert len(set(seen)) == 5
    cheetah = gym.make("nested_ac/HeavyCheetah-v0", task_seed=0)
    base = (
        cheetah.unwrapped.model.body_mass.copy() / cheetah.get_wrapper_attr("task_parameters")["mass_scale"]
    )
    set_task(cheetah, 1)
    scale = cheetah.get_wrapper_attr("task_parameters")["mass_scale"]
    np.testing.assert_allclose(cheetah.unwrapped.model.body_mass, base * scale)


def test_schedules_map_steps_to_tasks():
    assert [envs.Cyclic(10, (0, 1)).task_at(s) for s in (0, 9, 10, 25, 30)] == [0, 0, 1, 0, 1]
    explicit = envs.Explicit(((100, 3), (250, 1)))
    assert [explicit.task_at(s) for s in (0, 99, 100, 249, 250, 10**6)] == [0, 0, 3, 3, 1, 1]
    draw = envs.RandomDraw(10, (4, 5, 6), seed=1)
    tasks = [draw.task_at(s) for s in range(0, 400, 10)]
    assert tasks == [envs.RandomDraw(10, (4, 5, 6), seed=1).task_at(s) for s in range(0, 400, 10)]
    assert set(tasks) == {4, 5, 6} and all(draw.task_at(s) == draw.task_at(s - s % 10) for s in range(400))
    assert tasks != [envs.RandomDraw(10, (4, 5, 6), seed=2).task_at(s) for s in range(0, 400, 10)]


def vector_and_copies(n: int, seed: int) -> tuple[envs.GymnasiumVecEnv, DummyVecEnv]:
    config = resolve_config(overrides={"env.n_envs": n, "seed": seed})
    fast = make_env(config)
    config.env.vectorized = False
    slow = make_env(config)
    return fast, slow


def test_vector_path_applies_the_same_tasks_and_sb3_autoreset():
    fast, slow = vector_and_copies(4, seed=3)
    assert isinstance(fast, envs.GymnasiumVecEnv) and isinstance(slow, DummyVecEnv)
    assert fast.observation_space == slow.observation_space
    fast.reset()
    perms = {}
    for task in (0, 1, 2):
        fast.env_method("set_task", task)
        slow.env_method("set_task", task)
        assert fast.get_attr("task") == [task] * 4 == slow.get_attr("task")
        vector_effect, single_effect = fast.get_attr("effect")[0], slow.get_attr("effect")[0]
        np.testing.assert_array_equal(vector_effect.permutation, single_effect.permutation)
        perms[task] = tuple(vector_effect.permutation)
    assert len(set(perms.values())) > 1
    episodes = 0
    for _ in range(120):
        obs, rewards, dones, infos = fast.step(np.ones(4, dtype=np.int64))
        for i in np.flatnonzero(dones):
            episodes += 1
            info = infos[i]
            assert info["episode"]["l"] == info["episode"]["r"] > 0 and not info["TimeLimit.truncated"]
            assert abs(obs[i]).max() <= 0.05 < abs(info["terminal_observation"]).max()  # reset vs. fallen
    assert episodes >= 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"env.schedule.kind": "cyclic", "env.schedule.tasks": []}, "env.schedule.tasks is empty"),
        ({"env.schedule.kind": "random"}, "needs env.schedule.tasks"),
        ({"env.schedule.kind": "explicit", "env.schedule.switches": [[100, 1], [5000, 2]]}, "beyond the run"),
        ({"env.schedule.kind": "explicit", "env.schedule.switches": [[200, 1], [100, 2]]}, "increasing"),
        ({"env.schedule.kind": "cyclic", "env.schedule.tasks": [0, 1], "env.schedule.every": 0}, "every > 0"),
    ],
)
def test_bad_schedules_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_schedule(resolve_config(overrides={"steps": 4096, **overrides}))


def test_task_out_of_range_and_missing_set_task(tmp_path):
    base = {"steps": 2048, "run_dir": str(tmp_path), "progress_bar": False}
    two = {**base, "env.id": "nested_ac/TwoTaskCartPole-v0", "env.schedule.kind": "every"}
    with pytest.raises(ConfigError, match="reaches task 3, but env .* has 2 tasks"):
        train(resolve_config(overrides={**two, "env.schedule.every": 512}))
    with pytest.raises(ConfigError, match="no set_task.*envs.PermuteObservation"):
        train(resolve_config(overrides={**base, "env.id": "Acrobot-v1", "env.schedule.every": 512}))
    assert not any(tmp_path.iterdir())


class Shifted(gym.Wrapper):
    """A plug-in env defined only here: CartPole whose observation is shifted by ``task`` (its set_task)."""

    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.task = 0

    def set_task(self, task: int) -> None:
        self.task = task

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs + self.task, info

    def step(self, action):
        obs, *rest = self.env.step(action)
        return (obs + self.task, *rest)


if "TestPlugin-v0" not in gym.envs.registry:  # the CLI imports this module once more by name
    gym.register("TestPlugin-v0", entry_point=Shifted)


def test_plugged_in_env_trains_with_its_own_set_task(cli, tmp_path):
    args = ["--env", "tests.test_nonstationary:TestPlugin-v0", "--steps", "1536", "--n-envs", "2"]
    code, out, err = cli(
        "train",
        *args,
        "--run-dir",
        str(tmp_path),
        "--name",
        "plug",
        *FAST,
        "--set",
        "env.schedule.kind=cyclic",
        "--set",
        "env.schedule.tasks=[0,5]",
        "--set",
        "env.schedule.every=512",
    )
    assert code == 0, err
    scalars = read_scalars(tmp_path / "plug")
    # No task starts at the run's last step (1536): a switch there would start a task no step runs on.
    assert [(step, value) for step, value in scalars["task/switch"]] == [(0, 0), (512, 5), (1024, 0)]
    assert {value for _, value in scalars["task/index"]} == {0, 5}


def test_steps_past_the_budget_stay_on_the_last_measured_task(cli, tmp_path):
    """1000 steps asked, whole rollouts of 256 give 1024: the switch due at 1000 is not made."""
    args = ["--steps", "1000", "--n-envs", "2", "--run-dir", str(tmp_path), "--name", "past", *FAST]
    code, _, err = cli("train", *args, "--set", "env.schedule.every=500")
    assert code == 0, err
    scalars = read_scalars(tmp_path / "past")
    assert [(step, value) for step, value in scalars["task/switch"]] == [(0, 0), (500, 1)]
    assert scalars["task/index"][-1] == (1024, 1)
    assert [phase[2] for phase in json.loads((tmp_path / "past" / "summary.json").read_text())["phases"]] == [
        0,
        1,
    ]


def test_drifting_cartpole_trains_through_the_adapter_and_logs_its_gravity(cli, tmp_path):
    code, _, err = cli(
        "train",
        "--env",
        "nested_ac/DriftingCartPole-v0",
        "--steps",
        "2048",
        "--n-envs",
        "4",
        "--run-dir",
        str(tmp_path),
        "--name",
        "drift",
        *FAST,
        "--set",
        "env.schedule.every=768",
    )
    assert code == 0, err
    scalars = read_scalars(tmp_path / "drift")
    assert [step for step, _ in scalars["task/switch"]] == [0, 768, 1536]
    assert len({value for _, value in scalars["task/gravity"]}) == 3
    assert sum(value for _, value in scalars["episode/count"]) > 20 and "train/value_loss" in scalars


PLUGIN = """
import math

import json
import sys
from pathlib import Path

import gymnasium as gym

from nested_ac import envs

FLOOR = -200 * (math.pi**2 + 0.1 * 8**2 + 0.001 * 2**2)


def gravity_pendulum(task_seed=0):
    return envs.DriftAttribute(gym.make("Pendulum-v1"), "g", 5.0, 15.0, task_seed=task_seed)


class FlooredPendulum(envs.DriftAttribute):
    return_floor = FLOOR

    def __init__(self, task_seed=0):
        super().__init__(gym.make("Pendulum-v1"), "g", 5.0, 15.0, task_seed=task_seed)


gym.register("PlainGravity-v0", entry_point=gravity_pendulum)
gym.register("FlooredGravity-v0", entry_point=FlooredPendulum)
envs.register_nonstationary(
    "RegisteredGravity-v0", gravity_pendulum, changes="gravity", default_every=2048, return_floor=FLOOR
)
"""
PENDULUM_FLOOR = -200 * (np.pi**2 + 0.1 * 8**2 + 0.001 * 2**2)
PLUGIN_IDS = ("PlainGravity-v0", "FlooredGravity-v0", "nested_ac/RegisteredGravity-v0")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A user's plug-in module ``gravity_plugin`` in the current directory (Pendulum whose gravity each
    task redraws: negative returns), imported by ``--env gravity_plugin:...``; unregistered afterwards."""
    (tmp_path / "gravity_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("gravity_plugin", None)
    for env_id in PLUGIN_IDS:
        gym.envs.registry.pop(env_id, None)
        envs.NONSTATIONARY_ENVS.pop(env_id, None)


def pendulum_run(cli, name: str, *args: str) -> tuple[dict, str]:
    """Train a plug-in Pendulum for 4 phases of 2048 steps; its summary.json and the CLI's stderr."""
    run = ("--steps", "8192", "--n-envs", "2", "--run-dir", "runs", "--name", name, *FAST)
    code, _, err = cli("train", *run, *args)
    assert code == 0, err
    return json.loads(Path("runs", name, "summary.json").read_text()), err


def test_a_plugin_env_draws_its_tasks_from_the_run_seed(cli, plugin):
    gravities = {}
    for seed in (0, 1):
        schedule = ("--set", "env.schedule.every=256")
        run = ("--steps", "1024", "--n-envs", "2", "--run-dir", "runs", "--name", f"s{seed}", *FAST)
        code, _, err = cli(
            "train", "--env", "gravity_plugin:PlainGravity-v0", "--seed", str(seed), *run, *schedule
        )
        assert code == 0, err
        scalars = read_scalars(Path("runs", f"s{seed}"))
        tasks = dict(scalars["task/index"])  # logged with the task's gravity, at the same steps
        gravities[seed] = {int(tasks[step]): value for step, value in scalars["task/g"]}
        assert len(gravities[seed]) >= 3
        for task, g in gravities[seed].items():  # the documented draw: default_rng([run seed, task])
            assert g == pytest.approx(np.random.default_rng([seed, task]).uniform(5.0, 15.0), rel=1e-6)
    assert gravities[0] != gravities[1]


def test_a_registered_plugin_named_with_its_module_keeps_its_defaults(cli, plugin):
    summary, err = pendulum_run(cli, "reg", "--env", "gravity_plugin:nested_ac/RegisteredGravity-v0")
    config = resolve_config(Path("runs", "reg", "config.yaml"))
    assert (config.env.schedule.kind, config.env.schedule.every) == ("every", 2048)  # its default schedule
    assert len(summary["phases"]) == 4 and summary["R_min"] == pytest.approx(PENDULUM_FLOOR)
    assert None not in summary["P"] and summary["notes"] == [] and "note" not in err


@pytest.mark.parametrize(
    "env_id, args",
    [("FlooredGravity-v0", ()), ("PlainGravity-v0", ("--set", f"env.return_floor={PENDULUM_FLOOR}"))],
)
def test_a_plugin_envs_floor_comes_from_its_class_or_the_config(cli, plugin, env_id, args):
    schedule = ("--set", "env.schedule.every=2048")
    summary, err = pendulum_run(cli, "floored", "--env", f"gravity_plugin:{env_id}", *schedule, *args)
    assert summary["R_min"] == pytest.approx(PENDULUM_FLOOR) and summary["R"][0] < 0
    R, floor = summary["R"], summary["R_min"]
    assert summary["P"] == pytest.approx([(r - floor) / (R[0] - floor) for r in R])
    assert summary["notes"] == [] and "note" not in err


def test_an_unknown_floor_on_negative_returns_is_said_once_with_the_fix(cli, plugin):
    schedule = ("--set", "env.schedule.every=2048")
    for name in ("a", "b"):
        summary, err = pendulum_run(cli, name, "--env", "gravity_plugin:PlainGravity-v0", *schedule)
        assert summary["R_min"] is None and summary["P"] == [None] * 4
        assert len(summary["notes"]) == 1 and "--set env.return_floor=" in summary["notes"][0]
        assert err.count("nested-ac: note: ") == 1 and "no known return floor" in err
    code, _, err = cli("report", "runs", "--reps", "100")
    assert code == 0 and err.count("no known return floor") == 1
    report = Path("runs", "report", "report.md").read_text()
    assert report.count("no known return floor") == 1 and "return_floor attribute of the env" in report
