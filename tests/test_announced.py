"""Worlds that change on their own: tasks an env announces, and windows for drift."""

from __future__ import annotations

import json
import signal

import gymnasium as gym
import pytest

from nested_ac import continual
from nested_ac.config import resolve_config
from nested_ac.errors import ConfigError
from nested_ac.interrupts import TrainingInterrupted
from nested_ac.report import verdict, verdicts, write_report
from nested_ac.train import resume, train
from tests.conftest import FAST, read_scalars

EVERY = 512  # each copy's own steps per task
COPIES = 2


class SelfSwitching(gym.Wrapper):
    """Permuted CartPole that moves itself to the next task after every ``EVERY`` of its own steps and says
    so in ``info["task"]`` (the task the step ran on); no trainer schedule involved."""

    def __init__(self, task_seed: int = 0, flag: bool = False) -> None:
        super().__init__(gym.make("nested_ac/PermutedCartPole-v0", task_seed=task_seed))
        self.steps, self.task, self.flag = 0, 0, flag

    def step(self, action):
        if self.steps and self.steps % EVERY == 0:  # the switch comes before the step, as the clock's does
            self.task += 1
            self.env.get_wrapper_attr("set_task")(self.task)
        self.steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.flag:
            info["task_changed"] = self.steps > 1 and self.steps % EVERY == 1
        else:
            info["task"] = self.task
        return obs, reward, terminated, truncated, info


class Declared(SelfSwitching):
    announces_tasks = True


for name, entry in (("SelfSwitching-v0", SelfSwitching), ("DeclaredSwitching-v0", Declared)):
    if name not in gym.envs.registry:  # the CLI imports this module once more by name
        gym.register(name, entry_point=entry)


def _config(tmp_path, name: str, env_id: str, *assignments: str):
    overrides = {"env.id": env_id, "steps": 4 * EVERY * COPIES, "env.n_envs": COPIES}
    overrides |= {"run_dir": str(tmp_path), "name": name}
    sets = [item for item in FAST if "=" in item and not item.startswith("-")]
    return resolve_config(None, overrides | {"progress_bar": False}, [*sets, *assignments])


def test_an_env_that_switches_itself_gets_the_scheduled_worlds_R_k(tmp_path):
    """The same world, switched by a schedule after the same steps: the same phases and R_k, bit for bit;
    the announced run also marks its switches in TensorBoard."""
    scheduled = train(
        _config(
            tmp_path,
            "scheduled",
            "nested_ac/PermutedCartPole-v0",
            f"env.schedule.every={EVERY * COPIES}",
            "env.vectorized=false",
        )
    )
    announced = train(_config(tmp_path, "announced", "tests.test_announced:SelfSwitching-v0"))
    flagged = train(
        _config(tmp_path, "flagged", "tests.test_announced:SelfSwitching-v0", "env.kwargs={flag: true}")
    )
    assert len(scheduled.summary["R"]) == 4 and None not in scheduled.summary["R"]
    for result in (announced, flagged):
        assert result.switches == scheduled.switches
        assert result.summary["phases"] == scheduled.summary["phases"]
        assert result.summary["R"] == scheduled.summary["R"]
        assert result.summary["P_late"] == scheduled.summary["P_late"]
    marks = read_scalars(announced.run_dir)["task/switch"]
    assert [(step, int(value)) for step, value in marks] == [(k * EVERY * COPIES, k) for k in range(4)]


def test_a_schedule_and_a_declared_announcing_env_are_refused_before_anything_is_written(tmp_path):
    config = _config(tmp_path, "both", "tests.test_announced:DeclaredSwitching-v0", "env.schedule.every=2048")
    with pytest.raises(ConfigError, match="announces its own tasks"):
        train(config)
    assert not (tmp_path / "both").exists()


def test_a_schedule_and_an_undeclared_announcing_env_stop_with_a_config_error(tmp_path):
    config = _config(tmp_path, "both", "tests.test_announced:SelfSwitching-v0", "env.schedule.every=2048")
    with pytest.raises(ConfigError, match="the schedule switched tasks too"):
        train(config)


# -- windows, for a world that drifts without tasks --------------------------------------------------------

# (end step, return) of hand-made episodes, 4 windows of 100 steps: R_w = 15, 30, none, 10.
EPISODES = [(50, 10.0), (100, 20.0), (150, 30.0), (301, 5.0), (400, 15.0), (430, 99.0)]


@pytest.mark.parametrize(
    ("R_min", "P", "late", "slide"),
    [
        (None, [1.0, 2.0, None, 10 / 15], 10 / 15, 10 / 30),  # P_w = R_w / R_1
        (-10.0, [1.0, 40 / 25, None, 20 / 25], 20 / 25, 20 / 40),  # (R_w + 10) / (R_1 + 10)
    ],
)
def test_windowed_metrics_of_a_hand_made_return_sequence(R_min, P, late, slide):
    """The episode that ends at step 430 lies in the rest after the 4 whole windows and counts nowhere; the
    empty third window is left out of the late mean (the last 2 windows)."""
    steps, returns = zip(*EPISODES, strict=True)
    windows = continual.window_summary(steps, returns, total_steps=450, window=100, R_min=R_min)
    assert windows["R"] == [15.0, 30.0, None, 10.0] and windows["ends"] == [100, 200, 300, 400]
    assert windows["P"] == pytest.approx(P)
    assert windows["P_late"] == pytest.approx(late) and windows["slide"] == pytest.approx(slide)


def test_a_drifting_run_logs_its_windows_to_tensorboard_the_summary_and_the_report(tmp_path, cli):
    """Any run: a stationary CartPole cut into 4 windows of 1024 steps."""
    args = [
        "--env",
        "CartPole-v1",
        "--steps",
        "4096",
        "--n-envs",
        "2",
        "--run-dir",
        str(tmp_path),
        "--name",
        "w",
    ]
    code, out, err = cli("train", *args, *FAST, "--set", "metrics.window=1024")
    assert code == 0, err
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    windows = summary["windows"]
    assert windows["window"] == 1024 and len(windows["R"]) == 4 and windows["P"][0] == 1.0
    assert f"4 windows of 1,024 steps: late P_w {windows['P_late']:.2f}" in out
    scalars = read_scalars(tmp_path / "w")
    assert [step for step, _ in scalars["windows/R"]] == [1024, 2048, 3072, 4096]
    assert scalars["windows/P_late"][-1][1] == pytest.approx(windows["P_late"])
    table = write_report([tmp_path / "w"], tmp_path / "report", reps=100).table
    assert any(" | 1 | 4 × 1,024 | " in row for row in table), table


def test_a_window_longer_than_the_run_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="metrics.window must be 0"):
        resolve_config(None, {"steps": 1000}, ["metrics.window=2000"]).check()


@pytest.mark.parametrize(
    ("value", "said"),
    [(0.7, "collapsed (P_late ≤ 0.7)"), (0.75, "in between"), (0.9, "sustained (P_late ≥ 0.9)")],
)
def test_the_verdict_a_P_late_gives(value, said):
    assert verdict(value).startswith(said)
    assert verdicts({"w": {"ppo-adam": {0: value}}}) == [f"ppo-adam: P_late {value:.2f}: {verdict(value)}"]


def test_an_announcing_run_interrupted_and_resumed_keeps_its_phases(tmp_path, cli, monkeypatch):
    """The announcements' state (each copy's last task, the switches) is in the checkpoint: a run stopped
    after the second change and resumed has the uninterrupted run's phases and R_k."""
    from tests.test_reliability import interrupt_at

    whole = train(_config(tmp_path, "whole", "tests.test_announced:SelfSwitching-v0"))
    config = _config(tmp_path, "stopped", "tests.test_announced:SelfSwitching-v0", "checkpoint.every=256")
    interrupt_at(monkeypatch, 2 * EVERY * COPIES + 300, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        train(config)
    monkeypatch.undo()
    resumed = resume(tmp_path / "stopped")
    assert resumed.switches == whole.switches and resumed.summary["R"] == whole.summary["R"]
