"""Kron (heavyball's PSGDKron) as --optimizer kron: it trains on both engines, its state resumes bit for bit,
and continual backprop's restart of single weights is refused with a message that names the combination."""

from __future__ import annotations

import io
import signal

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from nested_ac.build import build_agent
from nested_ac.errors import ConfigError
from nested_ac.optim.kron import Kron
from nested_ac.train import make_env, train
from tests.conftest import read_scalars
from tests.test_reliability import cli_args, interrupt_at, small_config


def test_list_shows_trac_and_kron(cli):
    code, out, _ = cli("list", "optimizers")
    assert code == 0 and "trac " in out and "kron " in out and "heavyball's PSGDKron" in out
    code, out, _ = cli("list", "tools")
    assert code == 0 and "trac-scale" in out


@pytest.mark.parametrize("engine", ["fast", "sb3"])
def test_kron_trains_on_both_engines(tmp_path, engine):
    torch.set_num_threads(1)
    config = small_config(tmp_path, engine, **{"optimizer.name": "kron", "ppo.engine": engine, "steps": 512})
    agent = build_agent(config, make_env(config))
    assert type(agent.policy.optimizer) is Kron
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(512)
    after = list(agent.policy.parameters())
    assert all(not torch.equal(p, q) for p, q in zip(before, after, strict=True))  # every tensor moved
    assert all(torch.isfinite(p).all() for p in after)
    state = agent.policy.optimizer.state_dict()
    assert state["state"] and state["param_groups"][0]["step_count"] > 0  # heavyball counts steps here
    values = agent.logger.name_to_value
    assert all(np.isfinite(values[f"train/{key}"]) for key in ("policy_gradient_loss", "value_loss"))


def test_state_round_trip_continues_bit_for_bit():
    def run(steps: int, resume_at: int | None = None) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        optimizer = Kron(net.parameters(), lr=1e-2)
        data = torch.randn(steps, 16, 4)
        for t in range(steps):
            if t == resume_at:  # what a checkpoint holds: parameters, optimizer state, torch's generator
                buffer = io.BytesIO()
                torch.save([net.state_dict(), optimizer.state_dict(), torch.get_rng_state()], buffer)
                buffer.seek(0)
                parameters, state, rng = torch.load(buffer, weights_only=False)
                net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
                optimizer = Kron(net.parameters(), lr=1e-2)
                net.load_state_dict(parameters)
                optimizer.load_state_dict(state)
                torch.set_rng_state(rng)
            optimizer.zero_grad()
            net(data[t]).pow(2).sum().backward()
            optimizer.step()
        return [p.detach() for p in net.parameters()]

    assert all(torch.equal(p, q) for p, q in zip(run(30), run(30, resume_at=12), strict=True))


def test_interrupted_kron_run_resumes_exactly(cli, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    overrides = {"optimizer.name": "kron", "steps": 1024, "checkpoint.every": 256}
    reference = train(small_config(tmp_path, "reference", **overrides)).run_dir
    config = small_config(tmp_path, "run", **overrides)
    interrupt_at(monkeypatch, 500, signal.SIGTERM)
    code, _, err = cli("train", "--no-progress", "--optimizer", "kron", *cli_args(config))
    assert code == 143, err
    monkeypatch.undo()
    code, _, err = cli("train", "--resume", str(tmp_path / "run"))
    assert code == 0, err
    ours, theirs = PPO.load(tmp_path / "run" / "model.zip"), PPO.load(reference / "model.zip")
    assert ours.num_timesteps == theirs.num_timesteps == 1024
    pairs = zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    got, expected = read_scalars(tmp_path / "run"), read_scalars(reference)
    assert sorted(got["train/value_loss"]) == sorted(expected["train/value_loss"])


def test_kron_with_continual_backprop_is_refused_unless_the_state_is_kept(cli, tmp_path):
    config = small_config(tmp_path, "cbp", **{"optimizer.name": "kron", "cbp.enabled": True})
    with pytest.raises(ConfigError, match="--optimizer kron cannot restart single weights' optimizer state"):
        build_agent(config, make_env(config))
    code, _, err = cli("train", "--optimizer", "kron", "--cbp", *cli_args(config))
    assert code == 2 and "cbp.reset_optimizer_state=false" in err and not any(tmp_path.iterdir())
    kept = small_config(
        tmp_path,
        "kept",
        **{
            "optimizer.name": "kron",
            "cbp.enabled": True,
            "cbp.reset_optimizer_state": False,
            "cbp.replacement_rate": 0.05,
            "cbp.maturity": 4,
            "steps": 512,
        },
    )
    scalars = read_scalars(train(kept).run_dir)
    assert scalars["cbp/actor/layer0/replaced"][-1][1] > 0
