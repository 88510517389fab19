"""TRAC (Muppidi, Zhang & Yang, NeurIPS 2024): the scale against a hand computation of the paper's recursion,
outside changes and unit resets, checkpointed state, training through the CLI, with continual backprop."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
from scipy.special import erfi as scipy_erfi

from nested_ac.build import build_agent
from nested_ac.optim import TRAC
from nested_ac.optim.trac import TUNER_BETAS, erfi
from nested_ac.train import make_env, train
from tests.conftest import FAST, read_scalars
from tests.test_reliability import assert_same_final_run, cli_args, interrupt_at, small_config


def hand_trac(theta0: np.ndarray, grads: list[np.ndarray], lr: float, betas=(0.9, 0.999), eps=1e-8):
    """The paper's Algorithm 1 over Adam, in float64 numpy: the scale S_{t+1} and θ_{t+1} after each step."""
    reference, base = theta0.copy(), theta0.copy()
    m, v = np.zeros_like(theta0), np.zeros_like(theta0)
    tuner_v, tuner_sigma = np.zeros(len(TUNER_BETAS)), np.zeros(len(TUNER_BETAS))
    tuner_betas = np.array(TUNER_BETAS)
    scales, thetas = [], []
    for t, g in enumerate(grads, start=1):
        h = float(g @ (base - reference))
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        base = base - lr * m_hat / (np.sqrt(v_hat) + eps)
        tuner_v = tuner_betas**2 * tuner_v + h * h
        tuner_sigma = tuner_betas * tuner_sigma - h
        s = 1e-8 / scipy_erfi(1 / np.sqrt(2)) * scipy_erfi(tuner_sigma / (np.sqrt(2 * tuner_v) + 1e-8))
        scale = max(float(s.sum()), 0.0)
        scales.append(scale)
        thetas.append(reference + scale * (base - reference))
    return scales, thetas


def test_erfi_matches_scipy():
    for x in (0.0, 1e-9, 0.3, -0.7071, 1.0, 2.5, -4.0, 9.0, 20.0):
        assert erfi(x) == pytest.approx(float(scipy_erfi(x)), rel=1e-13, abs=1e-300)
    assert erfi(30.0) == math.inf and erfi(-30.0) == -math.inf


def hand_made_gradients(steps: int) -> list[np.ndarray]:
    """Mostly a steady push (h_t < 0: the scale grows), with a few reversals (h_t > 0)."""
    rng = np.random.default_rng(3)
    grads = []
    for t in range(steps):
        push = np.array([1.0, -0.5, 0.25, 2.0])
        grads.append((-push if t in (7, 8, 15) else push) + 0.1 * rng.standard_normal(4))
    return grads


def test_scale_and_parameters_follow_the_papers_recursion():
    theta0 = np.array([0.3, -0.2, 0.1, 0.5])
    grads = hand_made_gradients(40)
    scales, thetas = hand_trac(theta0, grads, lr=0.01)
    parameter = torch.nn.Parameter(torch.tensor(theta0))
    optimizer = TRAC([parameter], lr=0.01)
    for t, g in enumerate(grads):
        parameter.grad = torch.tensor(g)
        optimizer.step()
        assert optimizer.scale == pytest.approx(scales[t], rel=1e-9, abs=1e-300), t
        np.testing.assert_allclose(parameter.detach().numpy(), thetas[t], rtol=1e-9, atol=1e-15)
    assert scales[0] == 0.0  # h_1 = ⟨g_1, θ_1^base − θ_ref⟩ = 0
    assert max(scales) > 1e-6 and len({round(s, 12) for s in scales}) > 30  # a scale that moved


def test_a_scale_past_float32_makes_the_parameters_non_finite_without_an_error():
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = TRAC([parameter], lr=0.1)
    for _ in range(400):  # one gradient throughout: h_t < 0 every step, S grows without bound
        parameter.grad = torch.ones(3)
        optimizer.step()
    assert optimizer.scale > torch.finfo(torch.float32).max
    assert not torch.isfinite(parameter).all()  # what the run's fault check (check_update) then reports


def test_outside_changes_and_restarted_entries_move_the_reference():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = TRAC(layer.parameters(), lr=0.05)
    for _ in range(30):
        optimizer.zero_grad()
        layer(torch.randn(8, 3)).pow(2).sum().backward()
        optimizer.step()
    assert optimizer.scale > 0
    weight = layer.weight
    state = optimizer.state[weight]
    untouched = state["reference"][0].clone()
    with torch.no_grad():  # what continual backprop does to unit 1: fresh incoming row, state zeroed
        weight[1] = torch.tensor([0.4, -0.3, 0.2])
        for key in optimizer.per_parameter_state_keys:
            state[key][1] = 0.0
    optimizer.zero_grad()
    layer(torch.randn(8, 3)).pow(2).sum().backward()
    optimizer.step()
    assert torch.equal(state["reference"][1], torch.tensor([0.4, -0.3, 0.2]))  # restarts from its new value
    assert torch.equal(state["reference"][0], untouched)
    assert torch.equal(state["step"][1], torch.ones(3)) and torch.all(state["step"][0] == 31)
    # θ = θ_ref + S·(θ^base − θ_ref) for every entry, the restarted ones with one fresh Adam step
    expected = state["reference"] + optimizer.scale * state["displacement"]
    assert torch.equal(weight.detach(), expected)


def test_state_dict_round_trip_continues_bit_for_bit():
    def run(steps: int, resume_at: int | None = None):
        torch.manual_seed(1)
        layer = torch.nn.Linear(4, 3)
        optimizer = TRAC(layer.parameters(), lr=0.02)
        data = torch.randn(steps, 6, 4)
        for t in range(steps):
            if t == resume_at:
                saved = {"model": layer.state_dict(), "optimizer": optimizer.state_dict()}
                layer = torch.nn.Linear(4, 3)
                optimizer = TRAC(layer.parameters(), lr=0.02)
                layer.load_state_dict(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
            optimizer.zero_grad()
            layer(data[t]).sum().backward()
            optimizer.step()
        return [p.detach() for p in layer.parameters()], optimizer.scale

    (params, scale), (resumed, resumed_scale) = run(20), run(20, resume_at=11)
    assert scale == resumed_scale and scale > 0
    assert all(torch.equal(p, q) for p, q in zip(params, resumed, strict=True))


def test_bad_tuner_settings_are_refused():
    parameter = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"tuner_betas\[1\] must be in \[0.0, 1.0\], got 1.5"):
        TRAC([parameter], tuner_betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="s_prior must be > 0"):
        TRAC([parameter], s_prior=0.0)


def test_trac_run_logs_its_scale(cli, tmp_path):
    code, _, err = cli(
        "train", "--optimizer", "trac", "--steps", "512", "--n-envs", "2", "--run-dir", str(tmp_path),
        "--name", "trac", "--set", "optimizer.log_every=1", *FAST,
    )  # fmt: skip
    assert code == 0, err
    scales = [value for _, value in read_scalars(tmp_path / "trac")["trac/scale"]]
    assert scales and all(value >= 0 for value in scales) and max(scales) > 0


@pytest.mark.parametrize("engine", ["fast", "sb3"])
def test_trac_with_continual_backprop_restarts_reset_units(tmp_path, engine):
    torch.set_num_threads(1)
    overrides = {
        "optimizer.name": "trac",
        "cbp.enabled": True,
        "cbp.replacement_rate": 0.05,
        "cbp.maturity": 4,
        "ppo.engine": engine,
        "steps": 512,
    }
    config = small_config(tmp_path, "cbp", **overrides)
    agent = build_agent(config, make_env(config))
    optimizer = agent.policy.optimizer
    assert type(optimizer) is TRAC
    weight = agent.policy.mlp_extractor.policy_net[0].weight  # the actor's first layer: rows are units
    initial = weight.detach().clone()
    agent.learn(512)
    state = optimizer.state[weight]
    steps = state["step"].amin(dim=1)
    restarted = steps < state["step"].max()  # units whose Adam state restarted
    stepped = steps > 0  # … and have taken a TRAC step since (θ_ref follows a reset at the next step)
    moved = (state["reference"] != initial).any(dim=1)
    assert (restarted & stepped).any() and not restarted.all()
    # θ_ref: the initial weights, but a reset unit's fresh ones
    assert torch.equal(moved[stepped], restarted[stepped])
    assert optimizer.scale > 0


def test_interrupted_trac_run_resumes_exactly(cli, tmp_path, monkeypatch):
    reference = train(small_config(tmp_path, "reference", **{"optimizer.name": "trac"})).run_dir
    config = small_config(tmp_path, "run", **{"optimizer.name": "trac"})
    interrupt_at(monkeypatch, 3000, signal.SIGTERM)
    code, _, err = cli("train", "--no-progress", "--optimizer", "trac", *cli_args(config))
    assert code == 143, err
    monkeypatch.undo()
    code, _, err = cli("train", "--resume", str(tmp_path / "run"))
    assert code == 0, err
    assert_same_final_run(tmp_path / "run", reference)
