"""Parseval regularization, weight clipping and C-CHAIN: their equations on small networks, both engines, a
short run of each through the configuration, and their bad input."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from nested_ac.agents import ContinualPPO
from nested_ac.agents.by_hand import refusal
from nested_ac.build import build_tools
from nested_ac.config import resolve_config
from nested_ac.errors import ConfigError
from nested_ac.interrupts import TrainingInterrupted
from nested_ac.networks import policy_networks
from nested_ac.optim import AdaptiveUPGD
from nested_ac.plasticity import ContinualBackprop, reset_layers
from nested_ac.regularizers import (
    ChurnReduction,
    ParsevalRegularization,
    WeightClipping,
    initial_bound,
    parseval_residual,
)
from nested_ac.train import resume, train
from tests.conftest import read_scalars
from tests.test_plasticity import observations, training_step
from tests.test_reliability import interrupt_at


def tiny_model(env_id="CartPole-v1", tools=(), optimizer_class=torch.optim.Adam, init="orthogonal", **kwargs):
    """A ReLU actor and critic of 8 × 6 units (``kwargs``: ContinualPPO's, e.g. ``learning_rate``)."""
    env = make_vec_env(env_id, n_envs=1, seed=0)
    policy_kwargs = {
        "net_arch": {"pi": [8, 6], "vf": [8, 6]},
        "activation_fn": torch.nn.ReLU,
        "optimizer_class": optimizer_class,
        "optimizer_kwargs": {},
        "init": init,
    }
    return ContinualPPO(
        "MlpPolicy", env, n_steps=32, batch_size=32, seed=0, policy_kwargs=policy_kwargs,
        tools=list(tools), **kwargs,
    )  # fmt: skip


def zero_gradients(model):
    for p in model.policy.parameters():
        p.grad = torch.zeros_like(p)


# --- Parseval regularization ---


def test_parseval_penalty_and_its_gradient_on_a_hand_made_layer():
    """W = diag(1, 2), s = 1: W Wᵀ − I = diag(0, 3), so ‖·‖²_F = 9 and 4λ(W Wᵀ − I)W = 4λ·diag(0, 6)."""
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    residual = parseval_residual(weight.detach(), 1.0)
    assert residual.square().sum().item() == 9.0
    coef = 0.5
    (coef * torch.linalg.matrix_norm(weight @ weight.T - torch.eye(2)) ** 2).backward()
    torch.testing.assert_close(weight.grad, 4 * coef * torch.diag(torch.tensor([0.0, 6.0])))
    torch.testing.assert_close(4 * coef * residual @ weight.detach(), weight.grad)


@pytest.mark.parametrize(("init", "scale"), [("orthogonal", 2.0), ("lecun_uniform", 1.0)])
def test_parseval_adds_the_gradient_of_its_penalty_to_every_hidden_layer_only(init, scale):
    tool = ParsevalRegularization(coef=1e-2)
    model = tiny_model(tools=[tool], init=init)
    with torch.no_grad():  # away from the initialisation, so that the penalty has a gradient everywhere
        for p in model.policy.parameters():
            p.add_(torch.randn_like(p), alpha=0.3)
    zero_gradients(model)
    tool.before_gradient_clipping(model, model.policy.optimizer)
    logger = Logger(None, [])
    tool.log(logger)
    for network in policy_networks(model.policy):
        expected_penalty = 0.0
        for linear in network.hidden:
            weight = linear.weight.detach().clone().requires_grad_()
            penalty = torch.linalg.matrix_norm(weight @ weight.T - scale * torch.eye(len(weight))) ** 2
            (1e-2 * penalty).backward()
            torch.testing.assert_close(linear.weight.grad, weight.grad, rtol=1e-5, atol=1e-7)
            assert torch.all(linear.bias.grad == 0)
            expected_penalty += 1e-2 * penalty.item()
        assert torch.all(network.output.weight.grad == 0) and torch.all(network.output.bias.grad == 0)
        assert logger.name_to_value[f"parseval/{network.name}/penalty"] == pytest.approx(expected_penalty)


def test_parseval_gradient_is_clipped_with_the_loss():
    """The step is −lr·clip(g_loss + g_P): the penalty's gradient joins the loss's before the clipping."""
    tool = ParsevalRegularization(coef=1.0, scale=0.5)
    model = tiny_model(tools=[tool], optimizer_class=torch.optim.SGD, learning_rate=1.0, max_grad_norm=0.1)
    obs = observations(16)
    values, log_prob, _ = model.policy.evaluate_actions(obs, torch.zeros(16, dtype=torch.long))
    loss = values.pow(2).mean() - log_prob.mean()
    parameters = list(model.policy.parameters())
    gradients = list(torch.autograd.grad(loss, parameters, retain_graph=True))
    hidden = {id(linear.weight) for n in policy_networks(model.policy) for linear in n.hidden}
    for i, p in enumerate(parameters):
        if id(p) in hidden:
            gradients[i] = gradients[i] + 4 * parseval_residual(p.detach(), 0.5) @ p.detach()
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients]))
    factor = min(1.0, 0.1 / (norm.item() + 1e-6))
    expected = [p.detach() - g * factor for p, g in zip(parameters, gradients, strict=True)]
    model._optimizer_step(loss, {})
    assert norm > 0.1  # it was clipped
    for p, e in zip(parameters, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


# --- weight clipping ---


def test_the_bound_is_the_uniform_one_of_the_initial_variance():
    """Orthogonal (gain g): the entries' mean square is g²/max(fan_in, fan_out) = s_l²/3, the variance of
    U(−s_l, s_l); LeCun-uniform: s_l = √(3/fan_in), the initialisation's own bound; ``fan_in``: 1/√fan_in."""
    model = tiny_model()
    for network in policy_networks(model.policy):
        for linear in (*network.hidden, network.output):
            bound = initial_bound("orthogonal", network, linear)
            mean_square = linear.weight.detach().square().mean().item()
            assert bound**2 / 3 == pytest.approx(mean_square, rel=1e-5)
            fan_out, fan_in = linear.weight.shape
            assert initial_bound("default", network, linear) == 1 / math.sqrt(fan_in)
    assert initial_bound("orthogonal", network, network.output) == pytest.approx(math.sqrt(3 / 6))  # gain 1
    actor = policy_networks(model.policy)[0]
    assert initial_bound("orthogonal", actor, actor.output) == pytest.approx(0.01 * math.sqrt(3 / 6))
    lecun = tiny_model(init="lecun_uniform")
    for network in policy_networks(lecun.policy):
        for linear in (*network.hidden, network.output):
            bound = initial_bound("lecun_uniform", network, linear)
            assert bound == math.sqrt(3 / linear.weight.shape[1])
            assert linear.weight.abs().max() <= bound


@pytest.mark.parametrize("bound", WeightClipping.BOUNDS)
def test_every_weight_is_inside_its_bound_after_a_clipped_step(bound):
    """A large SGD step takes weights outside ±κ·s_l; with weight clipping every weight and bias of every
    layer, heads included, ends inside (and log_std is no layer's)."""
    obs = observations(32)
    unclipped = tiny_model(optimizer_class=torch.optim.SGD, learning_rate=50.0)
    tool = WeightClipping(kappa=1.0, bound=bound)
    clipped = tiny_model(tools=[tool], optimizer_class=torch.optim.SGD, learning_rate=50.0)
    for model in (unclipped, clipped):
        training_step(model, obs)
    outside, inside = 0, 0
    for free, network in zip(policy_networks(unclipped.policy), policy_networks(clipped.policy), strict=True):
        for (parameter, limit), unclipped_parameter in zip(
            tool.limits(clipped, network), free.parameters(), strict=True
        ):
            outside += int((unclipped_parameter.abs() > limit).sum())
            inside += int((parameter.abs() <= limit).all())
    assert outside > 0 and inside == 2 * 3 * 2  # 2 networks × 3 layers × (weight, bias)
    logger = Logger(None, [])
    tool.log(logger)
    assert 0 < logger.name_to_value["weight_clipping/actor/clipped_fraction"] <= 1


def test_weight_clipping_can_leave_the_heads_alone():
    tool = WeightClipping(kappa=1.0, heads=False)
    model = tiny_model(tools=[tool], optimizer_class=torch.optim.SGD, learning_rate=50.0)
    training_step(model, observations(32))
    clipped = {id(p) for network in policy_networks(model.policy) for p, _ in tool.limits(model, network)}
    heads = {id(p) for network in policy_networks(model.policy) for p in network.output.parameters()}
    assert not clipped & heads and len(clipped) == 8


# --- C-CHAIN ---


def perturbed_reference(model, tool, scale=0.2):
    """θ⁻ := θ + noise: the reference C-CHAIN compares the policy with."""
    generator = torch.Generator().manual_seed(3)
    tool.reference = [
        p.detach() + scale * torch.randn(p.shape, generator=generator) for p in model.policy.parameters()
    ]
    return dict(zip([name for name, _ in model.policy.named_parameters()], tool.reference, strict=True))


def mlp(x, params, prefix, head):
    """A two-hidden-layer ReLU MLP's output, written out."""
    h = torch.relu(x @ params[f"{prefix}.0.weight"].T + params[f"{prefix}.0.bias"])
    h = torch.relu(h @ params[f"{prefix}.2.weight"].T + params[f"{prefix}.2.bias"])
    return h @ params[f"{head}.weight"].T + params[f"{head}.bias"]


def test_cchain_churn_on_a_fixed_reference_batch_is_the_hand_computed_one():
    """D_π = mean_s Σ_a π⁻(a|s)(log π⁻(a|s) − log π(a|s)), D_V = mean_s (V(s) − V⁻(s))², and the gradient
    added is that of λ_π·D_π + λ_V·D_V; the policy's parameters are left bit for bit as they were."""
    tool = ChurnReduction(coef=3.0, value=True)
    model = tiny_model(tools=[tool])
    now = {name: p.detach().clone().requires_grad_() for name, p in model.policy.named_parameters()}
    then = perturbed_reference(model, tool)
    obs = observations(20)
    log_pi = torch.log_softmax(mlp(obs, now, "mlp_extractor.policy_net", "action_net"), -1)
    log_pi_then = torch.log_softmax(mlp(obs, then, "mlp_extractor.policy_net", "action_net"), -1)
    kl = (log_pi_then.exp() * (log_pi_then - log_pi)).sum(-1).mean()
    values = mlp(obs, now, "mlp_extractor.value_net", "value_net").flatten()
    values_then = mlp(obs, then, "mlp_extractor.value_net", "value_net").flatten()
    mse = (values - values_then).square().mean()
    assert kl > 1e-4 and mse > 1e-4
    before = [p.detach().clone() for p in model.policy.parameters()]
    churn = tool.churn(model.policy, obs)
    torch.testing.assert_close(churn["policy"], kl)
    torch.testing.assert_close(churn["value"], mse)
    assert all(torch.equal(p, q) for p, q in zip(model.policy.parameters(), before, strict=True))
    # The gradient it adds, on a reference batch of exactly these observations.
    tool._observations = obs
    model.batch_size = len(obs)
    zero_gradients(model)
    tool.before_gradient_clipping(model, model.policy.optimizer)
    (3.0 * kl + 3.0 * mse).backward()
    for name, p in model.policy.named_parameters():
        torch.testing.assert_close(
            p.grad, now[name].grad if now[name].grad is not None else torch.zeros_like(p)
        )
    # θ now is the next step's reference.
    assert all(torch.equal(r, p) for r, p in zip(tool.reference, model.policy.parameters(), strict=True))


def test_cchain_reference_takes_the_fresh_values_of_units_another_tool_resets():
    tool, cbp = ChurnReduction(), ContinualBackprop(replacement_rate=0.0)
    model = tiny_model(tools=[cbp, tool])
    perturbed_reference(model, tool)
    actor = policy_networks(model.policy)[0]
    reset_layers(model, cbp, actor, {0: torch.tensor([2, 5])})
    position = {id(p): i for i, p in enumerate(model.policy.parameters())}
    for parameter, rows in ((actor.hidden[0].weight, [2, 5]), (actor.hidden[0].bias, [2, 5])):
        reference = tool.reference[position[id(parameter)]]
        assert torch.equal(reference[rows], parameter[rows]) and not torch.equal(reference, parameter)
    outgoing = tool.reference[position[id(actor.hidden[1].weight)]]
    assert torch.all(outgoing[:, [2, 5]] == 0) and outgoing[:, 0].abs().sum() > 0


def test_cchain_churn_of_a_gaussian_policy_is_the_squared_change_of_its_means():
    tool = ChurnReduction()
    model = tiny_model("Pendulum-v1", tools=[tool])
    now = {name: p.detach() for name, p in model.policy.named_parameters()}
    then = perturbed_reference(model, tool)
    obs = torch.as_tensor(np.random.default_rng(0).normal(size=(20, 3)), dtype=torch.float32)
    means = mlp(obs, now, "mlp_extractor.policy_net", "action_net")
    means_then = mlp(obs, then, "mlp_extractor.policy_net", "action_net")
    churn = tool.churn(model.policy, obs)
    torch.testing.assert_close(churn["policy"], (means - means_then).square().mean())
    assert set(churn) == {"policy"}


def test_cchain_coefficient_follows_the_relative_loss_scale_and_restarts_at_a_switch():
    """λ = β·mean|L_pg| / (mean D + 1e-8) over the last ``window`` updates once ``warmup`` have passed."""
    tool = ChurnReduction(coef=7.0, target_scale=0.5, warmup=2, window=2)
    losses, churns = [0.3, -0.1, 0.2], [1e-3, 3e-3, 2e-3]
    coefs = []
    for loss, churn in zip(losses, churns, strict=True):
        logger = Logger(None, [])
        logger.record("train/policy_gradient_loss", loss)
        tool._churn, tool._steps = {"policy": torch.tensor(2 * churn)}, 2  # two steps' sum
        tool.log(logger)
        coefs.append(tool.coef["policy"])
        assert logger.name_to_value["cchain/policy_churn"] == pytest.approx(churn)
    assert coefs[0] == 7.0  # one update: still warming up
    assert coefs[1] == pytest.approx(0.5 * (0.3 + 0.1) / 2 / ((1e-3 + 3e-3) / 2 + 1e-8))
    assert coefs[2] == pytest.approx(0.5 * (0.1 + 0.2) / 2 / ((3e-3 + 2e-3) / 2 + 1e-8))
    tool.on_task_switch(None, None, 1)
    assert tool.coef["policy"] == 7.0 and tool.history["policy"] == [] and tool.reference is None


# --- through the configuration ---

SHORT = {
    "steps": 512,
    "env.n_envs": 2,
    "ppo.n_steps": 64,
    "ppo.batch_size": 64,
    "ppo.n_epochs": 2,
    "env.schedule.every": 256,
    "network.actor": [16, 16],
    "network.critic": [16, 16],
    "progress_bar": False,
    "report": False,
    "checkpoint.every": 256,
}
# Parseval with s = 1, away from the orthogonal initialisation's s = 2, so that its gradient is not ~0.
ALL_THREE = {
    "parseval.coef": 1e-2,
    "parseval.scale": 1.0,
    "weight_clipping.kappa": 3.0,
    "cchain.enabled": True,
    "cchain.warmup": 1,
}


def short_run(tmp_path, name, **overrides):
    return train(resolve_config(overrides={**SHORT, "run_dir": str(tmp_path), "name": name, **overrides}))


def test_the_three_tools_run_the_same_on_both_engines_and_log_and_save_their_state(tmp_path):
    """Through the configuration on each engine: tags logged, the same parameters to float rounding, and
    C-CHAIN's state in the checkpoint."""
    finals, scalars = {}, {}
    for engine in ("fast", "sb3"):
        result = short_run(tmp_path, engine, **ALL_THREE, **{"ppo.engine": engine})
        finals[engine] = list(PPO.load(result.run_dir / "model.zip").policy.parameters())
        scalars[engine] = read_scalars(result.run_dir)
    for p, q in zip(finals["fast"], finals["sb3"], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    tags = set(scalars["fast"])
    assert {
        "parseval/actor/penalty",
        "parseval/critic/penalty",
        "weight_clipping/actor/clipped_fraction",
        "weight_clipping/critic/clipped_fraction",
        "cchain/policy_churn",
        "cchain/policy_coef",
    } <= tags
    coefs = [value for _, value in scalars["fast"]["cchain/policy_coef"]]
    assert coefs[0] == 100.0 and len(set(coefs)) > 1  # adapted after the warm-up
    checkpoint = max((tmp_path / "fast" / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    states = torch.load(checkpoint, map_location="cpu", weights_only=False)["tools"]
    assert states[-3:-1] == [{}, {}]  # Parseval and weight clipping keep nothing between updates
    assert len(states[-1]["reference"]) == len(finals["fast"]) and states[-1]["updates_in_task"] >= 1


@pytest.mark.parametrize("mode", ["polyak", "distill"])
def test_the_three_tools_run_the_same_on_both_engines_for_the_nested_agent(tmp_path, mode):
    """nested-ppo: each critic level clipped on its own (its loss terms' gradients with it), the outer critic
    in polyak mode moved by averaging alone (no Parseval gradient, still clipped), frozen from step 256 in
    distill mode; both engines the same to float rounding."""
    nested = {"agent": "nested-ppo", "nested.mode": mode, "cchain.value": True}
    if mode == "distill":
        nested["nested.freeze_outer_after"] = 256
    finals = []
    for engine in ("fast", "sb3"):
        result = short_run(tmp_path, engine, **ALL_THREE, **nested, **{"ppo.engine": engine})
        finals.append(list(PPO.load(result.run_dir / "model.zip").policy.parameters()))
    for p, q in zip(*finals, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    tags = set(read_scalars(result.run_dir))
    assert {"parseval/critic_1/penalty", "weight_clipping/critic_2/clipped_fraction"} <= tags
    assert ("parseval/critic_2/penalty" in tags) == (mode == "distill")


def test_a_resumed_run_with_the_three_tools_continues_exactly(tmp_path, monkeypatch):
    """Interrupted after its second rollout, across a task switch, and resumed: the same parameters bit for
    bit and the same curves as the uninterrupted run."""
    overrides = {**ALL_THREE, "steps": 768, "cchain.value": True}
    reference = short_run(tmp_path, "reference", **overrides).run_dir
    interrupt_at(monkeypatch, 256, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        short_run(tmp_path, "run", **overrides)
    monkeypatch.undo()
    resume(tmp_path / "run")
    ours, theirs = PPO.load(tmp_path / "run" / "model.zip"), PPO.load(reference / "model.zip")
    for p, q in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert torch.equal(p, q)
    got, expected = read_scalars(tmp_path / "run"), read_scalars(reference)
    assert (
        {"cchain/value_coef", "cchain/policy_churn", "parseval/critic/penalty"} <= set(got) == set(expected)
    )
    for tag, points in got.items():
        if not tag.startswith("time/"):
            assert sorted(points) == sorted(expected[tag]), tag


def test_weight_clipping_with_upgd_keeps_upgds_perturbed_weights_inside_their_bounds(tmp_path):
    """Weight clipping + UPGD: UPGD steps (its utility-gated, perturbed update), then every weight is
    clipped into ±κ·s_l; the next step's utilities −g·w are of the clipped weights."""
    result = short_run(tmp_path, "upgd", **{"optimizer.name": "upgd", "weight_clipping.kappa": 1.0})
    model = PPO.load(result.run_dir / "model.zip")
    assert isinstance(model.policy.optimizer, AdaptiveUPGD)  # ``upgd``: the Adam-style UPGD
    tool = WeightClipping(kappa=1.0)
    for network in policy_networks(model.policy):
        for parameter, limit in tool.limits(model, network):
            assert parameter.abs().max() <= limit
    fractions = read_scalars(result.run_dir)["weight_clipping/actor/clipped_fraction"]
    assert any(value > 0 for _, value in fractions)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("parseval.coef", -1.0, "parseval.coef must be a finite number >= 0.0, got -1.0"),
        ("parseval.scale", 0.0, "parseval.scale must be a finite number > 0.0, got 0.0"),
        ("weight_clipping.kappa", -3.0, "weight_clipping.kappa must be a finite number > 0.0, got -3.0"),
        (
            "weight_clipping.bound",
            "normal",
            "weight_clipping.bound must be one of init, fan_in, got 'normal'",
        ),
        ("cchain.window", 0, "cchain needs warmup >= 0, window > 0 and batch_size > 0"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(key, value, message):
    on = {"parseval.coef": 1e-3, "weight_clipping.kappa": 1.0, "cchain.enabled": True}
    config = resolve_config(overrides={**on, key: value})
    with pytest.raises(ConfigError) as error:
        build_tools(config)
    assert message in str(error.value)


def test_the_fast_engine_keeps_its_hand_written_gradient_with_the_three_tools():
    tools = [ParsevalRegularization(1e-3), WeightClipping(3.0), ChurnReduction(value=True)]
    assert refusal(tiny_model(tools=tools)) is None


def test_off_by_default():
    config = resolve_config()
    names = {type(tool).__name__ for tool in build_tools(config)}
    assert not names & {"ParsevalRegularization", "WeightClipping", "ChurnReduction"}
