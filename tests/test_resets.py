"""Layer resets and plasticity injection: what they change, what they leave, and how they resume."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from nested_ac.agents import ContinualPPO, NestedPPO
from nested_ac.agents.by_hand import refusal
from nested_ac.build import build_agent, build_tools
from nested_ac.checkpoint import CheckpointStore
from nested_ac.config import RunConfig, resolve_config
from nested_ac.hooks import Tool
from nested_ac.networks import policy_networks
from nested_ac.optim import AdaptiveUPGD
from nested_ac.plasticity import ContinualBackprop, L2Init
from nested_ac.structural import InjectedHead, LayerReset, PlasticityInjection
from nested_ac.train import TrainingInterrupted, resume, train
from tests.conftest import read_scalars
from tests.test_plasticity import observations, outputs, training_step
from tests.test_reliability import interrupt_at


def make_model(
    tools=(),
    env_id="CartPole-v1",
    agent=ContinualPPO,
    init="orthogonal",
    optimizer_class=torch.optim.Adam,
    layer_norm=False,
    **kwargs,
):
    env = make_vec_env(env_id, n_envs=1, seed=0)
    policy_kwargs = {
        "net_arch": {"pi": [16, 16], "vf": [16, 16]},
        "activation_fn": nn.ReLU,
        "init": init,
        "optimizer_class": optimizer_class,
        **({"layer_norm": True} if layer_norm else {}),
    }
    return agent(
        "MlpPolicy",
        env,
        n_steps=64,
        batch_size=64,
        seed=0,
        policy_kwargs=policy_kwargs,
        tools=list(tools),
        **kwargs,
    )


class Spy(Tool):
    """The entries other tools report as reinitialised."""

    def __init__(self) -> None:
        self.entries = []

    def on_reinitialise(self, model, entries) -> None:
        self.entries += entries


def head_parameters(head: InjectedHead) -> dict[str, list[nn.Parameter]]:
    return {
        "frozen": [p for m in head.frozen for p in m.parameters()],
        "trainable": list(head.trainable.parameters()),
        "anchor": list(head.anchor.parameters()),
    }


def snapshot(parameters):
    return [p.detach().clone() for p in parameters]


def unchanged(parameters, before) -> bool:
    return all(torch.equal(p, q) for p, q in zip(parameters, before, strict=True))


def moved(parameters, before) -> bool:
    return all(not torch.equal(p, q) for p, q in zip(parameters, before, strict=True))


# ---- plasticity injection ----------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_injection_keeps_the_output_and_trains_only_the_new_head_and_the_encoder(layers):
    torch.manual_seed(0)
    spy = Spy()
    tool = PlasticityInjection(layers=layers, at="once")
    model = make_model([tool, spy])
    obs = observations()
    for _ in range(3):  # a trained network, not the initial one
        training_step(model, obs)
    trainable_before = sum(
        p.numel() for group in model.policy.optimizer.param_groups for p in group["params"]
    )
    before = outputs(model, obs)
    tool.inject(model)
    policy = model.policy
    assert isinstance(policy.action_net, InjectedHead) and isinstance(policy.value_net, InjectedHead)
    for got, expected in zip(outputs(model, obs), before, strict=True):
        assert torch.equal(got, expected)  # h_θ + (h_θ′ − h_θ′₀) = h_θ exactly at injection
    # The encoder keeps its first 3 - layers layers; the head θ (its last `layers` layers) is frozen.
    assert len([m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]) == 3 - layers
    assert len([m for m in policy.action_net.trainable if isinstance(m, nn.Linear)]) == layers
    optimized = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    heads = {name: head_parameters(getattr(policy, name)) for name in ("action_net", "value_net")}
    for parts in heads.values():
        assert all(not p.requires_grad and id(p) not in optimized for p in parts["frozen"] + parts["anchor"])
        assert all(p.requires_grad and id(p) in optimized for p in parts["trainable"])
        assert all(policy.optimizer.state.get(p, {}) == {} for p in parts["trainable"])  # a fresh state
    assert sum(p.numel() for p in policy.optimizer.param_groups[0]["params"]) == trainable_before
    # θ′ is a fresh draw (the actor's output layer: orthogonal, gain 0.01), not θ.
    new_output, old_output = policy.action_net.trainable[-1], policy.action_net.frozen[0][-1]
    assert not torch.equal(new_output.weight, old_output.weight)
    assert torch.allclose(new_output.weight @ new_output.weight.T, 1e-4 * torch.eye(2), atol=1e-9)
    # Every other tool hears of θ′ (L2-Init takes it as θ_0).
    trainable = {id(p) for parts in heads.values() for p in parts["trainable"]}
    assert {id(p) for p, _ in spy.entries} == trainable
    # One step moves θ′ and the encoder, never θ or θ′₀; the log-std-free categorical policy has no other.
    encoder = [*policy.mlp_extractor.policy_net.parameters(), *policy.mlp_extractor.value_net.parameters()]
    frozen = [p for parts in heads.values() for p in parts["frozen"] + parts["anchor"]]
    new = [p for parts in heads.values() for p in parts["trainable"]]
    saved = snapshot(encoder), snapshot(frozen), snapshot(new)
    training_step(model, obs)
    assert unchanged(frozen, saved[1])
    assert moved(new, saved[2])
    assert moved(encoder, saved[0]) if layers < 3 else not encoder
    assert not torch.equal(outputs(model, obs)[0], before[0])


def test_injection_into_a_gaussian_policy_leaves_log_std_and_takes_autograd():
    tool = PlasticityInjection(at="once")
    model = make_model([tool], env_id="Pendulum-v1")
    obs = torch.randn(32, 3)
    training_step_gaussian(model, obs)
    assert refusal(model) is None
    log_std = model.policy.log_std.detach().clone()
    with torch.no_grad():
        mean, value = model.policy._head(obs)[0], model.policy.predict_values(obs)
    tool.inject(model)
    with torch.no_grad():
        assert torch.equal(model.policy._head(obs)[0], mean)
        assert torch.equal(model.policy.predict_values(obs), value)
    assert torch.equal(model.policy.log_std, log_std)
    assert any(p is model.policy.log_std for p in model.policy.optimizer.param_groups[0]["params"])
    assert "injected head" in refusal(model)
    training_step_gaussian(model, obs)
    assert not torch.equal(model.policy.log_std, log_std)  # log_std trains on as before


def training_step_gaussian(model, obs):
    _, log_prob, _ = model.policy.evaluate_actions(obs, torch.zeros(len(obs), 1))
    model.policy.optimizer.zero_grad()
    (-log_prob.mean()).backward()
    model.policy.optimizer.step()


def test_repeated_linear_injections_fold_into_three_heads():
    tool = PlasticityInjection(layers=1, at="every", every=1)
    model = make_model([tool])
    obs = observations()
    counts = []
    for _ in range(4):
        training_step(model, obs)
        before = outputs(model, obs)
        tool.inject(model)
        for got, expected in zip(outputs(model, obs), before, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # the fold rounds, no more
        counts.append(sum(p.numel() for p in model.policy.parameters()))
        head = model.policy.action_net
        assert len(head.frozen) == 1 and len(head.trainable) == 1  # θ-sum, θ′, θ′₀: three linear heads
    assert len(set(counts)) == 1  # bounded: the same parameters after every injection


def test_repeated_deeper_injections_stop_at_the_limit():
    with pytest.raises(ValueError, match="set inject.limit"):
        PlasticityInjection(layers=2, at="switch")
    tool = PlasticityInjection(layers=2, at="every", every=1, limit=2)
    model = make_model([tool])
    obs = observations()
    for _ in range(3):
        training_step(model, obs)
        before = outputs(model, obs)
        tool.inject(model)
        for got, expected in zip(outputs(model, obs), before, strict=True):
            assert torch.equal(got, expected)  # a deeper head is never folded: exact each time
    assert tool.injections == 2
    assert len(model.policy.action_net.frozen) == 3  # θ, then the first θ′ with its anchor θ′₀


def test_injection_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="inject.layers must be an integer >= 1"):
        PlasticityInjection(layers=0)
    with pytest.raises(ValueError, match="inject.at must be one of switch, every, once"):
        PlasticityInjection(at="never")
    model = make_model([PlasticityInjection(layers=4, at="once")])
    with pytest.raises(ValueError, match="network 'actor' has 3 layers"):
        model.tools[0].inject(model)
    model = make_model([PlasticityInjection(layers=2, at="once"), ContinualBackprop()])
    with pytest.raises(ValueError, match="with continual backprop"):
        model.tools[0].inject(model)
    nested = make_model([PlasticityInjection(at="once")], agent=NestedPPO, levels=2, mode="polyak")
    with pytest.raises(ValueError, match="polyak"):
        nested.tools[0].inject(nested)


def test_injection_acts_on_the_actor_and_the_inner_critic_of_the_nested_agent():
    tool = PlasticityInjection(at="once")
    model = make_model([tool], agent=NestedPPO, levels=2)
    obs = observations()
    outer = snapshot(model.policy.outer_heads.parameters())
    before = model.policy.critic_values(obs)
    tool.inject(model)
    assert isinstance(model.policy.value_net, InjectedHead)
    assert not any(isinstance(m, InjectedHead) for m in model.policy.outer_heads)
    for got, expected in zip(model.policy.critic_values(obs), before, strict=True):
        assert torch.equal(got, expected)
    assert set(model.trainable_networks()) == {"actor", "critic_1", "critic_2"}
    assert model.trainable_networks()["critic_1"].output is model.policy.value_net.trainable[-1]
    training_step(model, obs)
    assert unchanged(model.policy.outer_heads.parameters(), outer)  # no nested loss in this step


def test_continual_backprop_trains_on_after_an_injection():
    """cbp scores and replaces encoder units by their outgoing weights in θ′ (the injected network's
    trainable path); a linear head has no activation of its own for it to miss."""
    cbp = ContinualBackprop(maturity=1, replacement_rate=0.2)
    tool = PlasticityInjection(at="once", step=0)
    model = make_model([cbp, tool])
    model.learn(192)  # injected at the end of the first rollout; two updates after it
    assert tool.injections == 1 and sum(cbp.replaced.values()) > 0
    network = model.trainable_networks()["actor"]
    assert network.outgoing(1) is model.policy.action_net.trainable[0]
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


# ---- layer resets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["orthogonal", "lecun_uniform"])
def test_reset_redraws_the_last_layers_from_the_policy_initialisation(init):
    spy = Spy()
    tool = LayerReset(layers=2, at="every", every=1)
    model = make_model([tool, spy], init=init)
    obs = observations()
    for _ in range(3):
        training_step(model, obs)
    networks = model.trainable_networks()
    first_layers = [networks[name].hidden[0] for name in ("actor", "critic")]
    kept = snapshot(p for layer in first_layers for p in layer.parameters())
    log_std_free = [p for p in model.policy.parameters()]
    assert len(log_std_free) == 12
    torch.manual_seed(123)
    tool.reset(model)
    torch.manual_seed(123)
    for name in ("actor", "critic"):  # a fresh draw, in the order the tool draws: hidden layer, then head
        network = networks[name]
        for linear in (network.hidden[1], network.output):
            expected = torch.empty_like(linear.weight)
            if init == "orthogonal":
                head_gain = 0.01 if name == "actor" else 1.0
                nn.init.orthogonal_(expected, gain=head_gain if linear is network.output else math.sqrt(2))
            else:
                bound = math.sqrt(3 / linear.in_features)
                expected.uniform_(-bound, bound)
            assert torch.equal(linear.weight, expected)
            assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
            assert model.policy.optimizer.state.get(linear.weight, {}) == {}  # moments and step count gone
            assert model.policy.optimizer.state.get(linear.bias, {}) == {}
    assert unchanged([p for layer in first_layers for p in layer.parameters()], kept)
    assert all(model.policy.optimizer.state[p] for layer in first_layers for p in layer.parameters())
    reported = {id(p) for p, _ in spy.entries}
    reset = {
        id(p) for n in networks.values() for layer in (n.hidden[1], n.output) for p in layer.parameters()
    }
    assert reported == reset
    assert all(torch.equal(index, torch.arange(len(p))) for p, index in spy.entries)


def test_reset_restarts_the_layer_norm_of_a_reset_hidden_layer():
    """With LayerNorm, a reset hidden layer's gain and bias return to 1 and 0, their optimizer state is
    dropped and other tools hear of them; the LayerNorm of a layer that is kept stays as trained."""
    spy = Spy()
    tool = LayerReset(layers=2, at="every", every=1)
    model = make_model([tool, spy], layer_norm=True)
    obs = observations()
    for _ in range(3):
        training_step(model, obs)
    networks = model.trainable_networks()
    for network in networks.values():
        for norm in network.norms:  # moved away from (1, 0) by training
            assert not torch.equal(norm.weight, torch.ones_like(norm.weight))
    kept = {name: snapshot(networks[name].norms[0].parameters()) for name in networks}
    tool.reset(model)
    reported = {id(p) for p, _ in spy.entries}
    for name, network in networks.items():
        first, reset = network.norms
        assert unchanged(list(first.parameters()), kept[name])
        assert torch.equal(reset.weight, torch.ones_like(reset.weight))
        assert torch.equal(reset.bias, torch.zeros_like(reset.bias))
        for parameter in reset.parameters():
            assert model.policy.optimizer.state.get(parameter, {}) == {}
            assert id(parameter) in reported


def test_reset_layers_restart_as_a_fresh_adam_would():
    """After the reset the first Adam step of a reset weight is the first step of a new Adam: -lr·sign(g)."""
    tool = LayerReset(layers=1, at="every", every=1)
    model = make_model([tool])
    obs = observations()
    for _ in range(5):
        training_step(model, obs)
    tool.reset(model)
    head = model.policy.action_net
    before = head.weight.detach().clone()
    training_step(model, obs)
    step = head.weight.detach() - before
    lr = model.policy.optimizer.param_groups[0]["lr"]
    grad = head.weight.grad
    expected = -lr * grad / (grad.abs() + 1e-5)  # m̂ = g, √v̂ = |g| at step 1
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-9)
    assert float(model.policy.optimizer.state[head.weight]["step"]) == 1


def test_reset_tells_continual_backprop_and_l2_init():
    cbp, l2 = ContinualBackprop(maturity=1000), L2Init(1e-3)
    tool = LayerReset(layers="all", at="every", every=2)
    model = make_model([cbp, l2, tool])
    model.learn(64)  # binds continual backprop, takes L2-Init's θ_0 and trains: no reset yet
    assert all((ages == 10).all() for ages in cbp.ages.values())  # one update of 10 steps
    tool.reset(model)
    assert all((ages == 0).all() for ages in cbp.ages.values())  # every unit reset: age 0
    names = {id(p): name for name, p in model.policy.named_parameters()}
    for network in model.trainable_networks().values():
        for p in network.parameters():
            assert torch.equal(l2.initial[names[id(p)]], p.detach())  # θ_0 ← the fresh values


def test_reset_is_per_network_and_leaves_log_std_alone():
    tool = LayerReset(layers=1, at="switch")
    model = make_model([tool], env_id="Pendulum-v1")
    log_std = model.policy.log_std.detach().clone()
    tool.on_task_switch(model, model.policy.optimizer, 0)  # the start: nothing
    assert tool.count == {}
    with torch.no_grad():
        model.policy.log_std.add_(0.5)
    tool.on_task_switch(model, model.policy.optimizer, 1)
    assert tool.count == {"actor": 1, "critic": 1}
    assert torch.equal(model.policy.log_std, log_std + 0.5)


def test_reset_covers_every_trainable_critic_of_the_nested_agent():
    tool = LayerReset(layers=1, at="every", every=1)
    model = make_model([tool], agent=NestedPPO, levels=2)
    before = model.policy.outer_heads[0].weight.detach().clone()
    torch.manual_seed(5)
    tool.reset(model)
    assert set(tool.count) == {"actor", "critic_1", "critic_2"}
    assert not torch.equal(model.policy.outer_heads[0].weight, before)


def test_bad_reset_settings_name_the_key():
    with pytest.raises(ValueError, match="reset.layers must be an integer >= 1"):
        LayerReset(layers=0)
    with pytest.raises(ValueError, match="reset.at must be one of switch, every"):
        LayerReset(at="once")
    with pytest.raises(ValueError, match="reset.every must be an integer >= 1"):
        LayerReset(at="every", every=0)
    model = make_model([LayerReset(layers=5)])
    with pytest.raises(ValueError, match="reset.layers is 5, but network 'actor' has 3 layers"):
        model.tools[0].on_task_switch(model, model.policy.optimizer, 0)


@pytest.mark.parametrize(
    ("optimizer_class", "extra", "layout"),
    [
        (torch.optim.Adam, [], "FlatAdam"),
        (torch.optim.Adam, [ContinualBackprop()], "ElementwiseAdam"),  # one step count per weight
        (AdaptiveUPGD, [], "AdaptiveUPGD"),
    ],
)
@pytest.mark.parametrize("kind", ["reset", "inject"])
def test_the_optimizer_steps_exactly_the_trainable_parameters_after_either_tool(
    optimizer_class, extra, layout, kind
):
    tool = (
        LayerReset(layers="all", at="every", every=1) if kind == "reset" else PlasticityInjection(at="once")
    )
    model = make_model([tool, *extra], optimizer_class=optimizer_class)
    assert type(model.policy.optimizer).__name__ == layout
    obs = observations()
    for _ in range(3):
        training_step(model, obs)
    tool.reset(model) if kind == "reset" else tool.inject(model)
    parameters = list(model.policy.parameters())
    before = snapshot(parameters)
    for _ in range(2):
        training_step(model, obs)
    for p, q in zip(parameters, before, strict=True):
        assert torch.equal(p, q) != p.requires_grad  # every trainable one moves, no frozen one does


# ---- the config path ---------------------------------------------------------------------------------


def config(tmp_path, name, **overrides) -> RunConfig:
    values = {
        "env.n_envs": 2,
        "ppo.n_steps": 64,
        "ppo.batch_size": 64,
        "ppo.n_epochs": 2,
        "env.schedule.every": 256,
        "steps": 768,
        "checkpoint.every": 256,
        "progress_bar": False,
        "report": False,
        "run_dir": str(tmp_path),
        "name": name,
        **overrides,
    }
    return resolve_config(overrides=values)


@pytest.mark.parametrize(
    ("section", "tool", "tag"),
    [
        ({"reset.at": "switch", "reset.layers": "all"}, LayerReset, "reset/actor/count"),
        ({"inject.at": "switch", "inject.layers": 1}, PlasticityInjection, "inject/critic/count"),
        ({"reset.at": "switch", "ppo.engine": "sb3"}, LayerReset, "reset/critic/count"),
        (
            {"inject.at": "switch", "inject.layers": 2, "inject.limit": 2, "ppo.engine": "sb3"},
            PlasticityInjection,
            "inject/actor/count",
        ),
        (
            {"inject.at": "switch", "agent": "nested-ppo", "shrink_perturb.mode": "switch"},
            PlasticityInjection,
            "inject/critic_1/count",
        ),
    ],
)
def test_training_through_the_config_path(tmp_path, section, tool, tag):
    torch.set_num_threads(1)
    run = config(tmp_path, "run", **section)
    index = [type(t) for t in build_tools(run)].index(tool)
    result = train(run)
    scalars = read_scalars(result.run_dir)
    assert scalars[tag][-1][1] == 2  # switches at 256 and 512
    latest = max((result.run_dir / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    saved = torch.load(latest, map_location="cpu", weights_only=False)["tools"][index]
    assert saved["trigger"]["fired"] >= 1


def test_an_injected_run_says_it_takes_autograd(tmp_path):
    run = config(tmp_path, "run", **{"inject.at": "once", "inject.step": 0, "steps": 256})
    model = build_agent(run, make_vec_env("CartPole-v1", n_envs=2, seed=0))
    assert refusal(model) is None
    model.learn(128)
    reason = refusal(model)
    assert (
        reason
        == "module action_net is an injected head (plasticity injection; written by hand: Linear heads)"
    )
    assert policy_networks(model.policy)[0].output is model.policy.action_net.trainable[-1]


def test_an_interrupted_injected_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Injected at step 128, interrupted at 384: the resumed run rebuilds the injected networks from the
    checkpoint and ends as the uninterrupted one, bit for bit (parameters, optimizer state, curves)."""
    torch.set_num_threads(1)
    extra = {"inject.at": "once", "inject.step": 128, "l2_init.coef": 0.01}
    reference = train(config(tmp_path, "reference", **extra)).run_dir
    interrupt_at(monkeypatch, 300, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        train(config(tmp_path, "run", **extra))
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    assert [p.name for p in CheckpointStore(run_dir / "checkpoints", 3).paths()] == [
        "step_256.pt",
        "step_384.pt",
    ]
    resume(run_dir)
    ours, theirs = (
        torch.load(d / "checkpoints" / "step_512.pt", weights_only=False) for d in (run_dir, reference)
    )
    kinds = [type(t) for t in build_tools(config(tmp_path, "any", **extra))]
    injection, l2 = kinds.index(PlasticityInjection), kinds.index(L2Init)
    assert ours["tools"][injection]["injections"] == 1
    assert "action_net.trainable.0.weight" in ours["policy"]
    for key, value in theirs["policy"].items():
        assert torch.equal(ours["policy"][key], value), key
    assert ours["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
    for state, expected in zip(
        ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(state[key], expected[key]) for key in expected)
    for key, value in theirs["tools"][l2]["initial"].items():  # L2-Init's θ_0, θ′ included
        assert torch.equal(ours["tools"][l2]["initial"][key], value)
    got, expected = read_scalars(run_dir), read_scalars(reference)
    for tag, points in expected.items():
        if not tag.startswith("time/"):
            assert sorted(got[tag]) == sorted(points), tag
