"""LayerNorm, CReLU, deep Fourier features and Normalize-and-Project: the networks they build, the fast
engine's gradient through them, the unit tools on them, and short runs of them with other tools."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from nested_ac.agents import ContinualPPO, NestedPPO, by_hand
from nested_ac.agents.by_hand import _mlp_backward, _mlp_forward
from nested_ac.agents.by_hand import refusal as by_hand_refusal
from nested_ac.build import sb3_ppo_kwargs
from nested_ac.config import resolve_config
from nested_ac.errors import ConfigError
from nested_ac.hooks import Tool
from nested_ac.layers import CReLU, Fourier, hidden_layers, output_features
from nested_ac.metrics import dormant_mask
from nested_ac.nap import NormalizeAndProject
from nested_ac.networks import mlp_network, policy_networks
from nested_ac.optim import ElementwiseAdam
from nested_ac.plasticity import ContinualBackprop, ReDo, reset_layers
from nested_ac.train import train
from tests.conftest import read_scalars
from tests.test_plasticity import observations, training_step
from tests.test_ppo import assert_gradient_by_hand_equals_autograd
from tests.test_reliability import assert_same_final_run, cli_args, interrupt_at, small_config


def make_model(activation=torch.nn.ReLU, layer_norm=True, tools=(), cls=ContinualPPO, **kwargs):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    policy_kwargs = {
        "net_arch": {"pi": [16, 8], "vf": [16, 8]},
        "activation_fn": activation,
        "layer_norm": layer_norm,
        "optimizer_class": ElementwiseAdam,
    }
    return cls(
        "MlpPolicy", env, n_steps=64, batch_size=64, seed=0, policy_kwargs=policy_kwargs,
        tools=list(tools), **kwargs,
    )  # fmt: skip


def test_crelu_and_fourier_outputs_are_their_equations():
    z = torch.tensor([[-1.5, 0.0, 0.25], [2.0, -0.5, 3.0]])
    crelu = CReLU()(z)
    fourier = Fourier()(z)
    for row in range(2):
        for unit in range(3):
            value = float(z[row, unit])
            assert crelu[row, unit] == max(value, 0.0) and crelu[row, 3 + unit] == max(-value, 0.0)
            assert math.isclose(fourier[row, unit], math.sin(value), abs_tol=1e-7)
            assert math.isclose(fourier[row, 3 + unit], math.cos(value), abs_tol=1e-7)


@pytest.mark.parametrize("cls", [ContinualPPO, NestedPPO])
def test_layer_norm_and_crelu_networks_have_norms_and_twice_the_features(cls):
    kwargs = {"levels": 2} if cls is NestedPPO else {}
    model = make_model(CReLU, layer_norm=True, cls=cls, **kwargs)
    networks = policy_networks(model.policy)
    assert [n.name for n in networks] == (
        ["actor", "critic_1", "critic_2"] if kwargs else ["actor", "critic"]
    )
    for network in networks:
        assert [linear.out_features for linear in network.hidden] == [16, 8]
        assert [linear.in_features for linear in network.hidden] == [4, 32]  # 2n features of layer 0
        assert network.output.in_features == 16  # 2 x 8
        for linear, norm in zip(network.hidden, network.norms, strict=True):
            assert isinstance(norm, torch.nn.LayerNorm) and norm.normalized_shape == (linear.out_features,)
            assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
        assert all(network.width(layer) == 2 for layer in range(2))
        assert torch.equal(network.outgoing_columns(0, torch.tensor([3])), torch.tensor([3, 19]))
        assert {id(p) for n in network.norms for p in n.parameters()} <= {id(p) for p in network.parameters()}
        h = network.hidden_outputs(observations(5))
        assert [tuple(x.shape) for x in h] == [(5, 32), (5, 16)]
    assert by_hand.refusal(model) is None  # the fast engine writes their gradient by hand


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.Tanh, CReLU, Fourier])
def test_hand_written_backward_equals_autograd_in_float64(activation, layer_norm):
    torch.manual_seed(0)
    mlp = hidden_layers(5, [7, 6], activation, layer_norm).double()
    head = torch.nn.Linear(output_features(5, [7, 6], activation), 3).double()
    network = mlp_network("net", mlp, head)
    with torch.no_grad():  # gains and biases away from 1 and 0
        for norm in filter(None, network.norms):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x, d_out = torch.randn(11, 5, dtype=torch.float64), torch.randn(11, 3, dtype=torch.float64)
    parameters = network.parameters()
    out = network.output(network.hidden_outputs(x)[-1])
    expected = torch.autograd.grad(out, parameters, d_out)
    for p in parameters:
        p.grad = torch.zeros_like(p)
    hand_out, trace = _mlp_forward(network, x)
    torch.testing.assert_close(hand_out, out.detach(), rtol=0, atol=1e-12)
    _mlp_backward(network, trace, d_out)
    assert len(parameters) == (10 if layer_norm else 6)
    for p, grad in zip(parameters, expected, strict=True):
        assert torch.linalg.vector_norm(grad) > 0
        torch.testing.assert_close(p.grad, grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(("env_id", "activation"), [("CartPole-v1", CReLU), ("Pendulum-v1", Fourier)])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_ppo_gradient_by_hand_equals_autograd_through_layer_norm_crelu_and_fourier(
    env_id, activation, layer_norm
):
    env = make_vec_env(env_id, n_envs=4, seed=0)
    nets = {"net_arch": {"pi": [16, 8], "vf": [16, 8]}, "activation_fn": activation, "layer_norm": layer_norm}
    model = ContinualPPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs=nets)
    model.learn(512)  # a few updates: gains and biases moved from 1 and 0
    model.set_logger(Logger(None, []))
    assert by_hand.refusal(model) is None
    assert_gradient_by_hand_equals_autograd(model)


def test_a_layer_norm_that_is_not_over_the_units_takes_autograd():
    model = make_model()
    model.policy.mlp_extractor.policy_net[1].normalized_shape = (4, 4)
    assert "does not normalise over its layer's units" in by_hand.refusal(model)


class Recorder(Tool):
    def __init__(self) -> None:
        self.entries = []

    def on_reinitialise(self, model, entries) -> None:
        self.entries += entries


@pytest.mark.parametrize("activation", [torch.nn.ReLU, CReLU])
def test_a_reset_restores_gain_and_bias_and_zeroes_their_optimizer_state(activation):
    recorder = Recorder()
    origin = ReDo()
    model = make_model(activation, tools=[origin, recorder])
    obs = observations()
    actor = policy_networks(model.policy)[0]
    norm = actor.norms[0]
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(0.5)
    training_step(model, obs)
    state = model.policy.optimizer.state
    units = torch.tensor([2, 5])
    reset_layers(model, origin, actor, {0: units})
    assert torch.all(norm.weight[units] == 1) and torch.all(norm.bias[units] == 0)
    others = [i for i in range(16) if i not in (2, 5)]
    assert torch.all(norm.weight[others] != 1) and torch.all(norm.bias[others] != 0)
    for parameter in (norm.weight, norm.bias):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.all(state[parameter][key][units] == 0)
            assert torch.all(state[parameter][key][others] != 0)
    columns = [2, 5, 18, 21] if activation is CReLU else [2, 5]
    assert torch.all(actor.hidden[1].weight[:, columns] == 0)
    kept = [i for i in range(actor.hidden[1].in_features) if i not in columns]
    assert torch.all(actor.hidden[1].weight[:, kept] != 0)
    reported = {id(p): index for p, index in recorder.entries}
    assert torch.equal(reported[id(norm.weight)], units) and torch.equal(reported[id(norm.bias)], units)
    assert torch.equal(reported[id(actor.hidden[1].weight)][1], torch.tensor(columns))


def test_continual_backprop_scores_a_crelu_unit_by_both_its_outputs():
    eta = 0.9
    cbp = ContinualBackprop(replacement_rate=0.0, decay_rate=eta)
    model = make_model(CReLU, layer_norm=False, tools=[cbp])
    cbp.bind(model)
    training_step(model, observations())
    actor = policy_networks(model.policy)[0]
    h = cbp.recorder.outputs[("actor", 0)]
    assert h.shape == (64, 32)
    contribution = h.abs().mean(0) * actor.hidden[1].weight.abs().sum(0)  # per output, after the step
    expected = (1 - eta) * (contribution[:16] + contribution[16:])
    torch.testing.assert_close(cbp.unit_utility(("actor", 0)), expected)
    torch.testing.assert_close(cbp.mean[("actor", 0)], (1 - eta) * h.mean(0))


def test_a_crelu_unit_is_dormant_only_when_both_its_outputs_are():
    h = torch.tensor([[1.0, 0.0, 0.0, 0.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0, 2.0, 0.0]])  # units 0, 1, 2
    # Scores: unit 0: 2 + 0, unit 1: 0 + 2, unit 2: 0 + 0; one output of units 0 and 1 never fires.
    assert dormant_mask(h, 0.1, outputs_per_unit=2).tolist() == [False, False, True]
    assert dormant_mask(h, 0.1).tolist() == [False, True, True, True, False, True]


def test_normalize_and_project_keeps_every_hidden_weight_norm_and_the_joint_gain_bias_norm():
    nap = NormalizeAndProject()
    model = make_model(tools=[nap])
    model.learn(64)  # the first rollout records the initial norms; its update projects after every step
    networks = policy_networks(model.policy)
    heads = {id(n.output.weight): n.output.weight.detach().norm() for n in networks}
    training_step(model, observations())
    for network in networks:
        for linear, norm in zip(network.hidden, network.norms, strict=True):
            name = next(n for n, p in model.policy.named_parameters() if p is linear.weight)
            torch.testing.assert_close(linear.weight.norm(), nap.initial[name], rtol=1e-6, atol=0)
            joint = torch.cat([norm.weight, norm.bias]).norm()
            torch.testing.assert_close(joint, torch.tensor(math.sqrt(linear.out_features)), rtol=1e-6, atol=0)
            assert not torch.all(norm.weight == 1)  # the gains moved, on the sphere
        assert network.output.weight.norm() != heads[id(network.output.weight)]  # heads left free
    without = make_model()
    weight = policy_networks(without.policy)[0].hidden[0].weight
    before = weight.detach().norm()
    without.learn(64)
    assert weight.norm() != before  # without the tool the norm moves


def test_normalize_and_project_needs_layer_norm():
    with pytest.raises(ConfigError, match=r"nap.enabled needs network.layer_norm: true"):
        resolve_config(overrides={"nap.enabled": True})
    with pytest.raises(ValueError, match="needs a LayerNorm in every hidden layer"):
        make_model(layer_norm=False, tools=[NormalizeAndProject()]).learn(64)
    with pytest.raises(ValueError, match="nap.affine must be one of joint, none"):
        NormalizeAndProject(affine="gain")


# Short runs of each combination through the configuration: (overrides, a tag it logs).
COMBINATIONS = {
    "layer-norm+soft-shrink-perturb": (
        {"network.layer_norm": True, "shrink_perturb.mode": "step", "shrink_perturb.shrink": 0.9999,
         "shrink_perturb.sigma": 1e-4},
        None,
    ),
    "cbp+layer-norm": (
        {"network.layer_norm": True, "cbp.enabled": True, "cbp.maturity": 2, "cbp.replacement_rate": 0.05},
        "cbp/actor/layer0/replaced",
    ),
    "cbp+crelu": (
        {"network.activation": "crelu", "cbp.enabled": True, "cbp.maturity": 2, "cbp.replacement_rate": 0.05},
        "cbp/actor/layer0/replaced",
    ),
    "redo+layer-norm": (
        {"network.layer_norm": True, "redo.enabled": True, "redo.every": 1}, "redo/actor/reset"
    ),
    "nap": ({"network.layer_norm": True, "nap.enabled": True}, "nap/actor/growth"),
    "fourier+layer-norm": ({"network.activation": "fourier", "network.layer_norm": True}, None),
}  # fmt: skip


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_combinations_train_through_the_config_on_the_hand_written_gradient(tmp_path, name, monkeypatch):
    overrides, tag = COMBINATIONS[name]
    asked = []  # (model, why not by hand) at every update

    def refusal(model):
        asked.append((model, by_hand_refusal(model)))
        return asked[-1][1]

    monkeypatch.setattr(by_hand, "refusal", refusal)
    train(small_config(tmp_path, name, **{**overrides, "steps": 512, "diagnostics.every": 1}))
    assert asked and all(reason is None for _, reason in asked)
    model = asked[-1][0]
    networks = policy_networks(model.policy)
    if overrides.get("network.layer_norm"):
        assert all(norm is not None for network in networks for norm in network.norms)
    scalars = read_scalars(tmp_path / name)
    assert "plasticity/actor/dormant" in scalars
    if tag is not None:
        assert tag in scalars
    if name.startswith("cbp"):
        assert scalars[tag][-1][1] > 0  # units were replaced
    if name == "layer-norm+soft-shrink-perturb":  # the gains shrink and are perturbed with the weights
        assert not torch.all(networks[0].norms[0].weight == 1)
    assert np.isfinite([value for _, value in scalars["train/loss"]]).all()


def test_nested_critics_gradient_by_hand_equals_autograd_through_layer_norm_and_crelu():
    model = make_model(CReLU, cls=NestedPPO, levels=3, kappa=0.5, n_epochs=2)
    model.learn(3 * 64)  # 3 updates: gains and biases moved, the critics apart
    model.set_logger(Logger(None, []))
    assert by_hand.refusal(model) is None
    assert_gradient_by_hand_equals_autograd(model)


def test_an_interrupted_run_with_layer_norm_crelu_nap_and_cbp_resumes_exactly(cli, tmp_path, monkeypatch):
    extra = {
        "network.layer_norm": True,
        "network.activation": "crelu",
        "nap.enabled": True,
        "cbp.enabled": True,
        "cbp.maturity": 20,
        "cbp.replacement_rate": 0.02,
    }
    reference = train(small_config(tmp_path, "reference", **extra)).run_dir
    config = small_config(tmp_path, "run", **extra)
    interrupt_at(monkeypatch, 3000, signal.SIGTERM)
    settings = [arg for key, value in extra.items() for arg in ("--set", f"{key}={str(value).lower()}")]
    code, _, err = cli("train", "--no-progress", *settings, *cli_args(config))
    assert code == 143, err
    monkeypatch.undo()
    code, _, err = cli("train", "--resume", str(tmp_path / "run"))
    assert code == 0, err
    assert_same_final_run(tmp_path / "run", reference)
    assert "nap/actor/growth" in read_scalars(tmp_path / "run")


@pytest.mark.parametrize("overrides", [{"network.layer_norm": True}, {"network.activation": "crelu"}])
def test_plain_sb3_ppo_refuses_what_it_cannot_build(overrides):
    with pytest.raises(ConfigError, match="no LayerNorm, one output per unit"):
        sb3_ppo_kwargs(resolve_config(overrides=overrides))
