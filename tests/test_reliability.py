"""Long runs: checkpoints, exact resume after SIGINT/SIGTERM, atomic writes, NaN faults, bad checkpoints."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat

from nested_ac import checkpoint, rundir
from nested_ac.agents import ContinualPPO
from nested_ac.agents.by_hand import HandGradient
from nested_ac.agents.policy import ContinualActorCriticPolicy
from nested_ac.callbacks import Throughput
from nested_ac.checkpoint import CheckpointStore
from nested_ac.config import RunConfig, resolve_config
from nested_ac.envs.effects import ObservationPermutation
from nested_ac.faults import NumericalFault, check_gradients, check_update
from nested_ac.interrupts import TrainingInterrupted
from nested_ac.plasticity import ReDo
from nested_ac.train import resume, train
from tests.conftest import read_scalars

REPO = Path(__file__).resolve().parents[1]

# 2 copies x 64 steps per rollout; a new task every 1000 steps; a checkpoint every 1024 steps.
SMALL = {
    "env.n_envs": 2,
    "ppo.n_steps": 64,
    "ppo.batch_size": 64,
    "ppo.n_epochs": 2,
    "env.schedule.every": 1000,
    "checkpoint.every": 1024,
    "progress_bar": False,
    "report": False,
    "seed": 5,
}
STEPS = 6144


def small_config(tmp_path: Path, name: str, **overrides) -> RunConfig:
    values = {**SMALL, "steps": STEPS, "run_dir": str(tmp_path), "name": name, **overrides}
    return resolve_config(overrides=values)


def cli_args(config: RunConfig) -> list[str]:
    flat = {**SMALL, "steps": config.steps, "run_dir": config.run_dir, "name": config.name}
    return [arg for key, value in flat.items() for arg in ("--set", f"{key}={value}")]


def assert_same_final_run(run_dir: Path, reference: Path) -> None:
    """Same parameters bit for bit, same step count, same curves (tasks included) without duplicates."""
    ours, theirs = PPO.load(run_dir / "model.zip"), PPO.load(reference / "model.zip")
    assert ours.num_timesteps == theirs.num_timesteps == STEPS
    for p, q in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert torch.equal(p, q)
    got, expected = read_scalars(run_dir), read_scalars(reference)
    for tag, points in got.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"duplicated steps in {tag}"
        if not tag.startswith("time/"):
            assert sorted(points) == sorted(expected[tag]), tag
    assert set(got) == set(expected)
    tasks = sorted(got["task/index"])
    assert {value for _, value in tasks} == {0, 1, 2, 3, 4, 5, 6}
    assert all(value == step // 1000 for step, value in tasks)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    result = train(small_config(tmp_path_factory.mktemp("ref"), "ref"))
    assert result.switches == [(step, step // 1000) for step in (0, 1000, 2000, 3000, 4000, 5000, 6000)]
    return result.run_dir


def test_checkpoints_keep_the_last_few_and_hold_every_piece(uninterrupted):
    store = CheckpointStore(uninterrupted / "checkpoints", keep=3)
    # Rollouts of 128 steps: checkpoints at 1024, 2048 ... 5120; the last 3 are kept.
    assert [path.name for path in store.paths()] == [f"step_{step}.pt" for step in (3072, 4096, 5120)]
    state = store.load(store.latest())
    assert state["format"] == checkpoint.FORMAT_VERSION and state["step"] == 5120
    assert state["agent"] == "ppo" and state["env_id"] == "nested_ac/PermutedCartPole-v0"
    assert state["parts"]["task_clock"]["task"] == 5
    assert state["optimizer"]["state"]  # Adam's moments
    assert len(state["parts"]["episode_stats"]["episodes"]) > 0
    assert {"python", "numpy", "torch"} <= set(state["rng"])


def test_real_sigint_then_resume_equals_uninterrupted_run(tmp_path, uninterrupted):
    config = small_config(tmp_path, "run")
    command = [sys.executable, "-m", "nested_ac.cli", "train", "--no-progress", *cli_args(config)]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "step_1024.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    step = int(err.split("interrupted at step ")[1].split(";")[0].replace(",", ""))
    assert 1024 <= step < STEPS
    assert f"resume with: nested-ac train --resume {run_dir}" in err
    assert (run_dir / "checkpoints" / f"step_{step}.pt").is_file() and not (run_dir / "model.zip").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "nested_ac.cli", "train", "--resume", str(run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # the resumed process adds its own file
    assert_same_final_run(run_dir, uninterrupted)


def interrupt_at(monkeypatch, step: int, signum: int) -> None:
    """Deliver a real ``signum`` to this process after the rollout that passes ``step``."""
    original = Throughput._on_rollout_end

    def _on_rollout_end(self) -> None:
        original(self)
        if self.num_timesteps >= step and not getattr(self, "_sent", False):
            self._sent = True
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Throughput, "_on_rollout_end", _on_rollout_end)


def test_sigterm_exits_143_restores_handlers_and_resumes_exactly(cli, tmp_path, monkeypatch, uninterrupted):
    config = small_config(tmp_path, "run")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    interrupt_at(monkeypatch, 3000, signal.SIGTERM)
    code, _, err = cli("train", "--no-progress", *cli_args(config))
    assert code == 143
    # The update after the rollout that crossed step 3000 finishes; the checkpoint is at the next boundary.
    assert f"interrupted at step 3,072; resume with: nested-ac train --resume {tmp_path / 'run'}" in err
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    monkeypatch.undo()
    code, _, err = cli("train", "--resume", str(tmp_path / "run"))
    assert code == 0, err
    assert_same_final_run(tmp_path / "run", uninterrupted)


def test_a_run_records_its_library_versions_and_resume_warns_if_they_changed(tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 1000, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        train(small_config(tmp_path, "run", steps=2048))
    monkeypatch.undo()
    path = tmp_path / "run" / "versions.json"
    saved = json.loads(path.read_text())
    assert set(saved) == {"python", "nested-ac", "torch", "numpy", "gymnasium", "stable-baselines3", "cpu"}
    assert saved["cpu"].endswith(f"({torch.backends.cpu.get_cpu_capability()})")
    assert (saved["torch"], saved["numpy"], saved["gymnasium"]) == (
        torch.__version__,
        np.__version__,
        gym.__version__,
    )
    path.write_text(json.dumps({**saved, "gymnasium": "0.0.1", "cpu": "another CPU (AVX2)"}))
    with pytest.warns(UserWarning, match=rf"gymnasium 0\.0\.1 -> {re.escape(gym.__version__)}, cpu another"):
        resume(tmp_path / "run")


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def crashing_save(state, file) -> None:
        calls.append(state["step"])
        if len(calls) == 3:
            file.write(b"half a checkpoint")
            raise OSError("disk full (simulated crash mid-write)")
        real_save(state, file)

    monkeypatch.setattr(checkpoint.torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated crash"):
        train(small_config(tmp_path, "run"))
    monkeypatch.undo()
    store = CheckpointStore(tmp_path / "run" / "checkpoints", keep=3)
    assert [path.name for path in store.paths()] == ["step_1024.pt", "step_2048.pt"]
    assert store.load(store.latest())["step"] == 2048
    # The points up to 3072 were written just before the failed checkpoint; the resume cuts the event
    # file back to what the checkpoint at 2048 recorded, so it writes no step twice.
    assert max(step for points in read_scalars(tmp_path / "run").values() for step, _ in points) > 2048
    resume(tmp_path / "run")
    for points in read_scalars(tmp_path / "run").values():
        assert len({step for step, _ in points}) == len(points)


def assert_fault_keeps_checkpoint(err: str, run_dir: Path, where: str) -> int:
    assert "numerical fault: non-finite value (NaN or inf) in " + where in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    fault_step = int(err.split(" at step ")[1].split(";")[0].replace(",", ""))
    store = CheckpointStore(run_dir / "checkpoints", keep=3)
    assert f"last good checkpoint: {store.latest()}" in err
    state = store.load(store.latest())
    assert state["step"] <= fault_step
    assert all(torch.isfinite(value).all() for value in state["policy"].values())
    return fault_step


def test_nan_in_the_loss_stops_with_a_message_and_a_good_checkpoint(cli, tmp_path, monkeypatch):
    def poisoned(original):
        def evaluate_actions(self, obs, actions):
            values, log_prob, entropy = original(self, obs, actions)
            if ContinualActorCriticPolicy.poison:
                values = values * float("nan")
            return values, log_prob, entropy

        return evaluate_actions

    monkeypatch.setattr(ContinualActorCriticPolicy, "poison", False, raising=False)
    # Autograd's path and the fast engine's hand-written one.
    for cls in (ContinualActorCriticPolicy, HandGradient):
        monkeypatch.setattr(cls, "evaluate_actions", poisoned(cls.evaluate_actions))
    rollout_end = Throughput._on_rollout_end

    def poison_after(self) -> None:
        rollout_end(self)
        if self.num_timesteps >= 2500:
            ContinualActorCriticPolicy.poison = True

    monkeypatch.setattr(Throughput, "_on_rollout_end", poison_after)
    config = small_config(tmp_path, "run")
    code, _, err = cli("train", "--no-progress", *cli_args(config))
    assert code == 3
    step = assert_fault_keeps_checkpoint(err, tmp_path / "run", "the loss (value_loss = nan)")
    assert step == 2560 and not (tmp_path / "run" / "model.zip").exists()


def test_nan_observation_from_the_env_is_reported(cli, tmp_path, monkeypatch):
    # The run takes the fast path: one call per step of both copies (plus one per finished episode).
    original, count = ObservationPermutation.observation, [0]

    def observation(self, obs):
        count[0] += 1
        result = original(self, obs)
        return result * np.nan if count[0] >= 2000 else result

    monkeypatch.setattr(ObservationPermutation, "observation", observation)
    code, _, err = cli("train", "--no-progress", *cli_args(small_config(tmp_path, "run")))
    assert code == 3
    step = assert_fault_keeps_checkpoint(err, tmp_path / "run", "the observation of env copy")
    assert 3000 < step <= 4000  # the 2000th call: 2 steps per call, plus episode ends


def test_non_finite_gradient_and_parameter_are_named(tmp_path):
    from nested_ac.build import build_agent
    from nested_ac.train import make_env

    config = small_config(tmp_path, "run")
    agent = build_agent(config, make_env(config))
    agent.set_logger(Logger(None, []))
    weight = agent.policy.value_net.weight
    weight.grad = torch.zeros_like(weight)
    weight.grad[0, 0] = float("inf")
    with pytest.raises(NumericalFault, match="in the gradient of value_net.weight at step 0"):
        check_gradients(agent, agent._clip_gradients())
    with torch.no_grad():
        agent.policy.mlp_extractor.policy_net[0].bias[1] = float("nan")
    with pytest.raises(NumericalFault, match="in the parameter mlp_extractor.policy_net.0.bias"):
        check_update(agent)


def unfinished_run(tmp_path: Path, name: str, **overrides) -> Path:
    """A run with checkpoints but no model.zip, as a crash leaves it."""
    result = train(small_config(tmp_path, name, steps=3072, **overrides))
    (result.run_dir / "model.zip").unlink()
    return result.run_dir


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_corrupt_or_incompatible_checkpoint_fails_cleanly_nothing_overwritten(cli, tmp_path):
    run_dir = unfinished_run(tmp_path, "run")
    latest = CheckpointStore(run_dir / "checkpoints", keep=3).latest()
    other = unfinished_run(tmp_path, "other", **{"env.id": "Acrobot-v1", "env.schedule.every": 0})
    cases = [
        (lambda: latest.write_bytes(latest.read_bytes()[:5000]), "is corrupt or unreadable"),
        (lambda: latest.write_bytes(b"garbage" * 100), "move it away to resume from step_1024.pt"),
        (
            lambda: latest.write_bytes(CheckpointStore(other / "checkpoints", 3).latest().read_bytes()),
            "its env_id is 'Acrobot-v1', the run's is 'nested_ac/PermutedCartPole-v0'",
        ),
    ]
    for damage, message in cases:
        damage()
        before = snapshot(run_dir)
        code, _, err = cli("train", "--resume", str(run_dir))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert snapshot(run_dir) == before

    state = torch.load(CheckpointStore(other / "checkpoints", 3).latest(), weights_only=False)
    state.update(env_id="nested_ac/PermutedCartPole-v0", agent="nested")
    torch.save(state, latest)
    code, _, err = cli("train", "--resume", str(run_dir))
    assert code == 2 and "its agent is 'nested', the run's is 'ppo'" in err


def test_resume_refuses_what_it_cannot_continue(cli, tmp_path):
    done = train(small_config(tmp_path, "done", steps=512)).run_dir
    code, _, err = cli("train", "--resume", str(done))
    assert code == 2 and "is complete (model.zip exists)" in err
    (done / "model.zip").unlink()
    code, _, err = cli("train", "--resume", str(done))
    assert code == 2 and "no checkpoint in" in err
    code, _, err = cli("train", "--resume", str(tmp_path / "nowhere"))
    assert code == 2 and "is not a run directory" in err
    code, _, err = cli("train", "--resume", str(done), "--steps", "10")
    assert code == 2 and "--resume takes no other options" in err


def enospc(*_args, **_kwargs) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def fail_checkpoint_at_3072(monkeypatch) -> None:
    real_save = torch.save

    def save(state, file) -> None:
        if state["step"] == 3072:
            file.write(b"the first bytes of a checkpoint")
            enospc()
        real_save(state, file)

    monkeypatch.setattr(checkpoint.torch, "save", save)


def fail_event_file_at_3072(monkeypatch) -> None:
    real_write = TensorBoardOutputFormat.write

    def write(self, key_values, key_excluded, step=0) -> None:
        if step >= 3000:
            enospc()
        real_write(self, key_values, key_excluded, step)

    monkeypatch.setattr(TensorBoardOutputFormat, "write", write)


def fail_model_zip(monkeypatch) -> None:
    def save(self, file, *args, **kwargs) -> None:
        file.write(b"the first bytes of a model")
        enospc()

    monkeypatch.setattr(BaseAlgorithm, "save", save)


@pytest.mark.parametrize(
    "fail, what, kept",
    [
        (fail_checkpoint_at_3072, "checkpoint {run}/checkpoints/step_3072.pt", 2048),
        (fail_event_file_at_3072, "a TensorBoard event file", 2048),
        (fail_model_zip, "{run}/model.zip", 5120),
    ],
    ids=["checkpoint", "event-file", "model.zip"],
)
def test_disk_full_stops_the_run_with_one_line_and_resume_works_once_space_is_back(
    cli, tmp_path, monkeypatch, uninterrupted, fail, what, kept
):
    run_dir = tmp_path / "run"
    fail(monkeypatch)
    code, _, err = cli("train", "--no-progress", *cli_args(small_config(tmp_path, "run")))
    monkeypatch.undo()
    last = run_dir / "checkpoints" / f"step_{kept}.pt"
    assert code == 4, err
    assert err.strip() == (
        f"nested-ac: disk full (no space left on device) while writing {what.format(run=run_dir)}; "
        f"the last checkpoint {last} is intact; free some space, then: nested-ac train --resume {run_dir}"
    )
    assert not (run_dir / "model.zip").exists()
    assert not list(run_dir.rglob("*.tmp"))  # no partial file left taking space
    store = CheckpointStore(run_dir / "checkpoints", keep=3)
    assert store.latest() == last and store.load(last)["step"] == kept
    code, _, err = cli("train", "--resume", str(run_dir))
    assert code == 0, err
    assert_same_final_run(run_dir, uninterrupted)


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_run_at_once(
    cli, tmp_path
):
    config = small_config(tmp_path, "run", steps=1_000_000)
    command = [sys.executable, "-m", "nested_ac.cli", "train", "--no-progress", *cli_args(config)]
    holder_process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "run"
    wait_for(lambda: (run_dir / "checkpoints" / "step_1024.pt").exists(), holder_process)
    before = snapshot(run_dir / "checkpoints")
    code, _, err = cli("train", "--resume", str(run_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"run directory {run_dir} is being trained by process {holder_process.pid}" in err
    assert rundir.holder(run_dir) == holder_process.pid
    assert set(snapshot(run_dir / "checkpoints")) >= set(before)  # nothing of the holder's touched

    holder_process.kill()
    holder_process.wait()
    assert rundir.holder(run_dir) is None  # free at once: the kernel dropped the dead holder's lock
    resumed = subprocess.Popen(
        [sys.executable, "-m", "nested_ac.cli", "train", "--resume", str(run_dir)],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: rundir.holder(run_dir) == resumed.pid, resumed)  # the resume took the run over
    resumed.kill()
    resumed.wait()


def wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the process ended early"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_checkpoints_of_the_old_top_level_packages_still_load():
    # Before envs/ and agents/ moved under nested_ac, pickles named their classes envs.* and agents.*.
    from nested_ac.checkpoint import _loads
    from nested_ac.envs.schedules import EveryNSteps

    old = pickle.dumps(EveryNSteps(1000), protocol=0).replace(b"nested_ac.envs.", b"envs.")
    assert b"cnested_ac" not in old and b"envs.schedules" in old
    restored = _loads(old)
    assert type(restored) is EveryNSteps and restored.task_at(2500) == 2


def test_a_checkpoint_written_before_the_tool_protocol_was_renamed_restores_its_tools():
    """Checkpoints of earlier versions keep the tools' states under ``plasticity_tools``: they restore."""

    def model() -> ContinualPPO:
        env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
        return ContinualPPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=0, tools=[ReDo(every=1)])

    trained = model()
    trained.learn(128)
    state = checkpoint.capture(trained, "ppo", "CartPole-v1", {}, trained.logger)
    state["plasticity_tools"] = state.pop("tools")
    fresh = model()
    fresh.set_logger(trained.logger)
    checkpoint.restore(fresh, state, {}, fresh.logger)
    assert fresh.tools[0].state_dict() == trained.tools[0].state_dict() and fresh.tools[0].rollouts == 2
