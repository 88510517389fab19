"""Continual backprop and the plasticity baselines: what they change, when, and their bad input."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from nested_ac import envs
from nested_ac.agents import ContinualPPO, NestedPPO
from nested_ac.agents.ppo import ENGINES, call
from nested_ac.build import build_agent, build_tools, optimizer_spec
from nested_ac.callbacks import TaskClock
from nested_ac.config import RunConfig
from nested_ac.forgetting import GradientProjection, NaturalContinualLearning, SoftMasking
from nested_ac.hooks import Tool
from nested_ac.networks import policy_networks
from nested_ac.optim import UPGD, AdaptiveUPGD, ElementwiseAdam, FlatAdam, with_element_steps
from nested_ac.plasticity import (
    ContinualBackprop,
    L2Init,
    ReDo,
    ShrinkPerturb,
    optimizer_state_keys,
    reset_units,
)
from nested_ac.train import train
from tests.conftest import FAST, read_scalars
from tests.test_reliability import assert_same_final_run, cli_args, interrupt_at, small_config


def make_model(
    optimizer_class=torch.optim.Adam, net_arch=None, activation=torch.nn.ReLU, optimizer_kwargs=None, tools=()
):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    policy_kwargs = {
        "net_arch": net_arch or {"pi": [16, 16], "vf": [16, 16]},
        "activation_fn": activation,
        "optimizer_class": optimizer_class,
        "optimizer_kwargs": optimizer_kwargs or {},
    }
    return ContinualPPO(
        "MlpPolicy",
        env,
        n_steps=64,
        batch_size=64,
        seed=0,
        policy_kwargs=policy_kwargs,
        tools=list(tools),
    )


def observations(n=64):
    return torch.as_tensor(np.random.default_rng(0).normal(size=(n, 4)), dtype=torch.float32)


def training_step(model, obs):
    """One forward (recorded by the tools' hooks) and one optimizer step, as inside PPO's update."""
    with model.minibatch_forward():
        values, log_prob, _ = model.policy.evaluate_actions(obs, torch.zeros(len(obs), dtype=torch.long))
    loss = values.pow(2).mean() - log_prob.mean()
    model.policy.optimizer.zero_grad()
    loss.backward()
    model.policy.optimizer.step()  # ContinualPPO's post-step hook runs the tools


def outputs(model, obs):
    with torch.no_grad():
        distribution = model.policy.get_distribution(obs)
        return distribution.distribution.logits.clone(), model.policy.predict_values(obs).clone()


def test_replacing_a_dead_unit_keeps_outputs_and_resets_exactly_its_entries():
    cbp = ContinualBackprop(replacement_rate=1 / 16, maturity=2, decay_rate=0.9)
    model = make_model(activation=torch.nn.Tanh, tools=[cbp])  # tanh: no unit is dead by chance, as ReLU's
    cbp.bind(model)
    obs = observations()
    for _ in range(2):  # immature: no replacement during the first m = 2 steps
        training_step(model, obs)
    assert all(count == 0 for count in cbp.replaced.values())
    # Step 3 without the tool, then the tool alone: every unit is mature, ρ·16 = 1 replacement per layer.
    model.tools = []
    training_step(model, obs)
    model.tools = [cbp]
    networks = policy_networks(model.policy)
    with torch.no_grad():  # unit 3 of every hidden layer made dead by hand: no outgoing weights
        for network in networks:
            for layer in range(2):
                network.outgoing(layer).weight[:, 3] = 0.0
                cbp.utility[(network.name, layer)][3] = 0.0
    before = outputs(model, obs)
    weights = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    state = model.policy.optimizer.state
    moments = {
        p: {k: v.clone() for k, v in state[p].items() if k != "step"} for p in model.policy.parameters()
    }
    cbp.after_optimizer_step(model, model.policy.optimizer)
    for a, b in zip(before, outputs(model, obs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert all(count == 1 for count in cbp.replaced.values())
    for network in networks:
        for layer in range(2):
            assert cbp.ages[(network.name, layer)][3] == 0  # the dead unit is the one replaced
            incoming, outgoing = network.hidden[layer], network.outgoing(layer)
            name = next(n for n, p in model.policy.named_parameters() if p is incoming.weight)
            assert not torch.equal(incoming.weight[3], weights[name][3])  # fresh incoming weights
            rows = [i for i in range(16) if i != 3]
            assert torch.equal(incoming.weight[rows], weights[name][rows])  # the others untouched
            assert incoming.bias[3] == 0 and torch.all(outgoing.weight[:, 3] == 0)
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.all(state[incoming.weight][key][3] == 0) and state[incoming.bias][key][3] == 0
                assert torch.all(state[outgoing.weight][key][:, 3] == 0)
                # Other entries untouched (layer 1's column 3: layer 0's replaced unit's outgoing weights).
                columns = rows if layer > 0 else slice(None)
                kept = state[incoming.weight][key][rows][:, columns]
                assert torch.equal(kept, moments[incoming.weight][key][rows][:, columns])
                assert torch.all(kept != 0)


def test_a_replacement_moves_the_mean_contribution_into_the_next_bias():
    # One observation, repeated, and lr = 0: every activation equals its running mean f̂, so moving
    # W_out[:, i]·f̂_i into the next bias before zeroing W_out[:, i] leaves the output unchanged.
    cbp = ContinualBackprop(replacement_rate=1 / 16, maturity=5, decay_rate=0.9)
    model = make_model(activation=torch.nn.Tanh, tools=[cbp])
    for group in model.policy.optimizer.param_groups:
        group["lr"] = 0.0
    cbp.bind(model)
    obs = observations(1).repeat(64, 1)
    for _ in range(8):  # replacements at steps 6, 7, 8; the fresh units stay immature until step 12
        training_step(model, obs)
    replaced = dict(cbp.replaced)
    assert all(count > 0 for count in replaced.values())
    model.tools = []
    training_step(model, obs)  # the forward the tool will read; the tool alone after it
    before = outputs(model, obs)
    outgoing = {
        key: network.outgoing(key[1]).weight.detach().clone()
        for network in policy_networks(model.policy)
        for key in [(network.name, 0), (network.name, 1)]
    }
    cbp.after_optimizer_step(model, model.policy.optimizer)
    assert all(cbp.replaced[key] == replaced[key] + 1 for key in replaced)
    for key, weights in outgoing.items():  # the removed units did contribute
        unit = int(np.flatnonzero(cbp.ages[key] == 0)[-1])
        assert weights[:, unit].abs().sum() > 1e-3
    for a, b in zip(before, outputs(model, obs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.99, 0.99)])
@pytest.mark.parametrize("name", ["adam", "upgd"])
def test_a_reset_weight_restarts_its_optimizer_like_a_fresh_one(name, betas):
    """Dohare et al. (2024): the first update of a weight reset at a late step is a fresh optimizer's."""
    config = RunConfig()
    config.optimizer.name, config.optimizer.betas, config.cbp.enabled = name, betas, True
    config.optimizer.sigma, config.optimizer.protect = 0.0, False  # UPGD: no noise, the gate only on noise
    optimizer_class, kwargs = optimizer_spec(config)
    model = make_model(
        optimizer_class, activation=torch.nn.Tanh, optimizer_kwargs=kwargs, tools=build_tools(config)
    )
    optimizer_class, kwargs = with_element_steps((optimizer_class, kwargs))  # what the agent built
    optimizer, lr = model.policy.optimizer, model.policy.optimizer.param_groups[0]["lr"]
    assert type(optimizer) is optimizer_class
    obs = observations()
    for _ in range(300):
        training_step(model, obs)
    actor = policy_networks(model.policy)[0]
    reset_units(actor, 0, torch.tensor([3]), optimizer, init="orthogonal")
    weight = actor.hidden[0].weight
    values, log_prob, _ = model.policy.evaluate_actions(obs, torch.zeros(len(obs), dtype=torch.long))
    optimizer.zero_grad()
    (values.pow(2).mean() - log_prob.mean()).backward()
    gradient, start = weight.grad[3].clone(), weight[3].detach().clone()
    optimizer.step()
    fresh_weight = start.clone().requires_grad_()
    fresh = optimizer_class([fresh_weight], lr=lr, **kwargs)
    fresh_weight.grad = gradient
    fresh.step()
    update, fresh_update = weight[3].detach() - start, fresh_weight.detach() - start
    assert torch.linalg.vector_norm(update - fresh_update) <= 0.1 * torch.linalg.vector_norm(fresh_update)
    state = optimizer.state[weight]
    assert torch.all(state["step"][3] == 1) and torch.all(state["step"][:3] == 301)
    if name == "upgd":  # the utility trace restarts too: Û of the reset row is its first utility -g·w
        beta_u = config.optimizer.beta_utility
        corrected = [s["utility_trace"] / (1 - beta_u ** s["step"]) for s in optimizer.state.values()]
        eta = torch.stack([c.max() for c in corrected]).max()
        first_utility = -gradient * start
        torch.testing.assert_close(state["utility_trace"][3] / (1 - beta_u), first_utility)
        torch.testing.assert_close(
            optimizer.scaled_utilities()[weight][3], torch.sigmoid(first_utility / eta)
        )


def test_per_element_steps_only_with_unit_resets():
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    for engine in ENGINES:
        config = RunConfig()
        config.ppo.engine = engine
        assert type(build_agent(config, env).policy.optimizer) in (torch.optim.Adam, FlatAdam)
        for key in ("cbp", "redo"):
            config = RunConfig()
            config.ppo.engine = engine
            getattr(config, key).enabled = True
            optimizer = build_agent(config, env).policy.optimizer
            assert type(optimizer) is ElementwiseAdam and optimizer.defaults["eps"] == config.optimizer.eps
            config.optimizer.name = "upgd-sgd"
            optimizer = build_agent(config, env).policy.optimizer
            assert type(optimizer) is UPGD and optimizer.per_element_steps


@pytest.mark.parametrize("tool", [ContinualBackprop, ReDo])
def test_an_agent_built_directly_with_a_unit_reset_keeps_a_step_count_per_weight(tool):
    """ContinualPPO(tools=[...]) as through a run configuration: Adam becomes ElementwiseAdam
    (SB3's Adam eps), UPGD gets per-element steps; a tool added later to a per-tensor Adam is refused."""
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    for engine in ENGINES:
        optimizer = ContinualPPO("MlpPolicy", env, engine=engine, tools=[tool()]).policy.optimizer
        assert type(optimizer) is ElementwiseAdam and optimizer.defaults["eps"] == 1e-5
    policy_kwargs = {"optimizer_class": AdaptiveUPGD, "optimizer_kwargs": {"sigma": 0.0}}
    model = ContinualPPO("MlpPolicy", env, tools=[tool()], policy_kwargs=policy_kwargs)
    assert type(model.policy.optimizer) is AdaptiveUPGD and model.policy.optimizer.per_element_steps
    model = ContinualPPO("MlpPolicy", env, n_steps=64, batch_size=64)
    model.tools = [tool()]
    with pytest.raises(ValueError, match="keeps one step count per tensor; pass the tool when building"):
        model.learn(64)


def test_replacement_count_follows_rate_with_carry():
    cbp = ContinualBackprop(replacement_rate=0.1, maturity=0, decay_rate=0.9)
    model = make_model(tools=[cbp])
    cbp.bind(model)
    obs = observations()
    for _ in range(10):
        training_step(model, obs)
    # 16 eligible units per layer, ρ·16 = 1.6 per step: 16 replacements over 10 steps, carry ≈ 0.
    assert cbp.replaced[("actor", 0)] == 16 and cbp.replaced[("critic", 1)] == 16
    assert cbp.carry[("actor", 0)] == pytest.approx(0.0, abs=1e-9)
    cbp_half = ContinualBackprop(replacement_rate=0.03, maturity=0)
    model.tools = [cbp_half]
    cbp.recorder.remove()
    cbp_half.bind(model)
    for _ in range(3):
        training_step(model, obs)
    assert cbp_half.replaced[("actor", 0)] == 1 and cbp_half.carry[("actor", 0)] == pytest.approx(0.44)


@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.Tanh])
def test_contribution_utility_is_mean_absolute_activation_times_outgoing_weight_mass(activation):
    """c_i = mean_batch |h_i| · Σ_k |W_out[k, i]|, bit for bit (ReLU: mean h serves as mean |h|)."""
    cbp = ContinualBackprop(replacement_rate=0.0, decay_rate=0.9)
    model = make_model(activation=activation, tools=[cbp])
    cbp.bind(model)
    training_step(model, observations())
    for network in policy_networks(model.policy):
        for layer in range(len(network.hidden)):
            h = cbp.recorder.outputs[(network.name, layer)]
            contribution = h.abs().mean(0) * network.outgoing(layer).weight.abs().sum(0)
            expected = torch.zeros_like(contribution).lerp_(contribution, 1 - 0.9)
            assert torch.equal(cbp.utility[(network.name, layer)], expected)
            assert torch.equal(cbp.mean[(network.name, layer)], torch.zeros_like(h[0]).lerp_(h.mean(0), 0.1))


def test_the_fast_engine_runs_forward_hooks_as_module_call_does():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x, seen = torch.randn(5, 4), []
    mlp[1].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]) or output * 2)
    mlp[2].register_forward_hook(lambda module, inputs, output: None)
    assert torch.equal(call(mlp, x), mlp(x))
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
    mlp[0].register_forward_pre_hook(lambda module, inputs: (inputs[0] + 1,))  # other hooks: __call__ itself
    assert torch.equal(call(mlp, x), mlp(x))


def test_immature_units_are_never_replaced():
    cbp = ContinualBackprop(replacement_rate=1.0, maturity=5)
    model = make_model(tools=[cbp])
    cbp.bind(model)
    obs = observations()
    for _ in range(5):
        training_step(model, obs)
    assert sum(cbp.replaced.values()) == 0
    training_step(model, obs)  # now mature: ρ = 1 replaces every unit, which are then immature again
    assert cbp.replaced[("actor", 0)] == 16
    for _ in range(5):
        training_step(model, obs)
    assert cbp.replaced[("actor", 0)] == 16


def test_optimizer_state_layouts():
    assert optimizer_state_keys(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)) == (
        "momentum_buffer",
    )
    upgd = AdaptiveUPGD([torch.zeros(1, requires_grad=True)])
    assert optimizer_state_keys(upgd) == ("utility_trace", "exp_avg", "exp_avg_sq")
    model = make_model(torch.optim.RMSprop)
    with pytest.raises(ValueError, match="unknown optimizer state layout of RMSprop: supported are Adam"):
        ContinualBackprop().bind(model)


def test_upgd_traces_of_replaced_units_are_zeroed():
    cbp = ContinualBackprop(replacement_rate=0.25, maturity=1)
    model = make_model(AdaptiveUPGD, tools=[cbp])
    cbp.bind(model)
    obs = observations()
    for _ in range(2):
        training_step(model, obs)
    layer0 = policy_networks(model.policy)[0].hidden[0]
    units = torch.as_tensor(np.flatnonzero(cbp.ages[("actor", 0)] == 0))
    assert len(units) == 4
    state = model.policy.optimizer.state[layer0.weight]
    for key in ("utility_trace", "exp_avg", "exp_avg_sq"):
        assert torch.all(state[key][units] == 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(replacement_rate=1.5), r"replacement_rate must be in \[0, 1\]"),
        (dict(replacement_rate=-0.1), r"replacement_rate must be in \[0, 1\]"),
        (dict(maturity=-1), "maturity must be >= 0"),
        (dict(decay_rate=1.0), r"decay_rate must be in \[0, 1\)"),
    ],
)
def test_bad_cbp_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContinualBackprop(**kwargs)


def test_network_without_hidden_layer_is_rejected():
    model = make_model(net_arch={"pi": [], "vf": [16]})
    with pytest.raises(ValueError, match="network 'actor' has none"):
        ContinualBackprop().bind(model)


def test_cli_cbp_runs_and_logs_for_ppo_and_nested(cli, tmp_path):
    for agent in ("ppo", "nested-ppo"):
        code, _, err = cli(
            "train",
            "--cbp",
            "--agent",
            agent,
            "--steps",
            "512",
            "--n-envs",
            "2",
            "--run-dir",
            str(tmp_path),
            "--name",
            agent,
            "--set",
            "cbp.maturity=2",
            "--set",
            "cbp.replacement_rate=0.05",
            *FAST,
        )
        assert code == 0, err
    scalars = read_scalars(tmp_path / "nested-ppo")
    assert scalars["cbp/critic_2/layer0/replaced"][-1][1] > 0
    assert {"cbp/actor/mean_age", "cbp/actor/mean_utility", "cbp/critic_1/layer1/replaced"} <= set(scalars)


def test_bad_cbp_config_is_one_line(cli, tmp_path):
    code, _, err = cli("train", "--cbp", "--set", "cbp.replacement_rate=2", "--run-dir", str(tmp_path), *FAST)
    assert code == 2 and "replacement_rate must be in [0, 1], got 2.0" in err and not any(tmp_path.iterdir())


def test_interrupted_cbp_run_resumes_exactly(cli, tmp_path, monkeypatch):
    extra = {"cbp.enabled": True, "cbp.maturity": 20, "cbp.replacement_rate": 0.02}
    reference = train(small_config(tmp_path, "reference", **extra)).run_dir
    config = small_config(tmp_path, "run", **extra)
    interrupt_at(monkeypatch, 3000, signal.SIGTERM)
    code, _, err = cli(
        "train",
        "--no-progress",
        "--cbp",
        "--set",
        "cbp.maturity=20",
        "--set",
        "cbp.replacement_rate=0.02",
        *cli_args(config),
    )
    assert code == 143, err
    # The checkpoint holds one Adam step count per weight; replaced units' entries restarted.
    latest = max((tmp_path / "run" / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    optimizer = torch.load(latest, map_location="cpu", weights_only=False)["optimizer"]
    steps = [state["step"] for state in optimizer["state"].values()]
    assert all(step.dim() > 0 for step in steps)  # per element (torch's Adam: one 0-d count per tensor)
    assert any(bool((step < step.max()).any()) for step in steps)
    monkeypatch.undo()
    code, _, err = cli("train", "--resume", str(tmp_path / "run"))
    assert code == 0, err
    assert_same_final_run(tmp_path / "run", reference)


def test_shrink_perturb_each_step_and_at_switches():
    model = make_model()
    before = [p.detach().clone() for p in model.policy.parameters()]
    ShrinkPerturb("step", shrink=0.5, sigma=0.0).after_optimizer_step(model, model.policy.optimizer)
    for p, q in zip(model.policy.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), 0.5 * q)


class ParameterSpy(Tool):
    """The policy's parameters at each task notification."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[torch.Tensor]]] = []

    def on_task_switch(self, model, optimizer, task) -> None:
        self.seen.append((task, [p.detach().clone() for p in model.policy.parameters()]))


def test_shrink_perturb_fires_at_every_switch_of_a_cyclic_schedule_and_never_at_the_start():
    env = make_vec_env("nested_ac/PermutedCartPole-v0", n_envs=2, seed=0)
    before, after = ParameterSpy(), ParameterSpy()
    tools = [before, ShrinkPerturb("switch", alpha=0.5), after]
    agent = ContinualPPO("MlpPolicy", env, tools=tools, n_steps=64, batch_size=64, n_epochs=1, seed=0)
    agent.learn(total_timesteps=512, callback=TaskClock(envs.Cyclic(128, (0, 1))))
    tasks = [task for task, _ in before.seen]
    assert tasks[:4] == [0, 1, 0, 1]  # the start, then switches at 128, 256 and 384 (and 512, the end)
    fired = [
        any(not torch.equal(p, q) for p, q in zip(b, a, strict=True))
        for (_, b), (_, a) in zip(before.seen, after.seen, strict=True)
    ]
    assert fired == [False] + [True] * (len(tasks) - 1)


def test_shrink_perturb_at_switches_keys_on_the_switch_not_the_task_id():
    model = make_model()
    tool = ShrinkPerturb("switch", alpha=0.25)
    current = [p.detach().clone() for p in model.policy.parameters()]
    tool.on_task_switch(model, model.policy.optimizer, task=1)  # a random schedule's first task: the start
    assert all(torch.equal(p, q) for p, q in zip(model.policy.parameters(), current, strict=True))
    tool.on_task_switch(model, model.policy.optimizer, task=0)
    named = zip(model.policy.named_parameters(), current, strict=True)
    assert all(not torch.equal(p, q) for (name, p), q in named if name.endswith("weight"))  # biases: 0 both


def test_shrink_perturb_blends_only_the_networks_not_frozen_critics_or_log_std():
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = NestedPPO("MlpPolicy", env, levels=2, freeze_outer_after=0, n_steps=64, batch_size=64, seed=0)
    model.num_timesteps = 1  # past freeze_outer_after: the outer critic is frozen
    tool = ShrinkPerturb("switch", alpha=0.5)
    tool.on_task_switch(model, model.policy.optimizer, task=0)
    current = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    tool.on_task_switch(model, model.policy.optimizer, task=1)
    for name, p in model.policy.named_parameters():
        if name == "log_std" or name.startswith("outer_"):
            assert torch.equal(p, current[name]), name
        elif name.endswith("weight"):  # (biases start at 0 in both)
            assert not torch.equal(p, current[name]), name


def test_l2_init_pulls_toward_the_initial_weights():
    model = make_model()
    tool = L2Init(coef=10.0)
    tool.on_rollout_end(model)
    initial = [p.detach().clone() for p in model.policy.parameters()]
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(1.0)
    tool.after_optimizer_step(model, model.policy.optimizer)
    lr = model.policy.optimizer.param_groups[0]["lr"]
    for p, q in zip(model.policy.parameters(), initial, strict=True):
        torch.testing.assert_close(p.detach(), q + 1.0 - lr * 10.0 * 1.0)


def test_redo_resets_a_dormant_unit():
    model = make_model(ElementwiseAdam)
    model.learn(64)  # fills the rollout buffer
    actor = policy_networks(model.policy)[0]
    with torch.no_grad():
        actor.hidden[0].weight[5] = 0.0
        actor.hidden[0].bias[5] = -1.0  # ReLU(negative) = 0: unit 5 never fires
    tool = ReDo(tau=0.025, every=1)
    tool.on_rollout_end(model)
    assert tool.reset["actor"] >= 1
    assert torch.all(actor.hidden[1].weight[:, 5] == 0) and actor.hidden[0].bias[5] == 0
    assert actor.hidden[0].weight[5].abs().sum() > 0


@pytest.mark.parametrize(("mode", "freeze"), [("polyak", None), ("distill", None), ("distill", 0)])
def test_continual_backprop_replaces_the_same_units_of_the_same_networks_on_both_engines(mode, freeze):
    """One rule on both engines: every network the agent lets tools change (nested-ppo: every critic until
    frozen, in either mode), its units scored on the update's minibatch."""
    env = make_vec_env("CartPole-v1", n_envs=4, seed=0)
    nested = {"levels": 2, "mode": mode, "freeze_outer_after": freeze, "n_steps": 128, "batch_size": 64}
    policy_kwargs = {"net_arch": {"pi": [32, 32], "vf": [32, 32]}, "optimizer_class": ElementwiseAdam}
    collector = NestedPPO("MlpPolicy", env, engine="sb3", seed=0, policy_kwargs=policy_kwargs, **nested)
    collector.learn(1)  # one rollout, shared by both engines' updates
    replaced = {}
    for engine in ENGINES:
        cbp = ContinualBackprop(replacement_rate=0.02, maturity=3, decay_rate=0.9)
        model = NestedPPO(
            "MlpPolicy", env, engine=engine, seed=0, policy_kwargs=policy_kwargs, tools=[cbp],
            **nested,
        )  # fmt: skip
        cbp.bind(model)
        model.rollout_buffer, model.num_timesteps = collector.rollout_buffer, collector.num_timesteps
        model.set_logger(Logger(None, []))
        np.random.seed(1)
        model.train()
        replaced[engine] = {key: (count, cbp.ages[key].tolist()) for key, count in cbp.replaced.items()}
    assert replaced["fast"] == replaced["sb3"]
    networks = {name for (name, _), (count, _) in replaced["fast"].items() if count}
    assert networks == ({"actor", "critic_1"} if freeze == 0 else {"actor", "critic_1", "critic_2"})


class RowsSeen(Tool):
    """After every optimizer step (and after the tools before it), the row counts of the activations
    continual backprop has just scored its units on."""

    def __init__(self, cbp: ContinualBackprop) -> None:
        self.cbp, self.rows = cbp, set()

    def after_optimizer_step(self, model, optimizer) -> None:
        self.rows |= {len(h) for h in self.cbp.recorder.outputs.values()}


@pytest.mark.parametrize("engine", ENGINES)
def test_with_gradient_projection_continual_backprop_scores_units_on_the_minibatch(engine):
    cbp, projection = ContinualBackprop(replacement_rate=0.0), GradientProjection(memory_size=16)
    seen = RowsSeen(cbp)
    model = ContinualPPO(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=2, seed=0),
        engine=engine,
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        seed=0,
        tools=[cbp, projection, seen],
        policy_kwargs={"net_arch": {"pi": [16, 16], "vf": [16, 16]}, "optimizer_class": ElementwiseAdam},
    )
    model.learn(128)
    projection.on_task_switch(model, model.policy.optimizer, 0)
    projection.on_task_switch(model, model.policy.optimizer, 1)  # a memory of task 0: 16 observations
    seen.rows.clear()
    model.learn(256, reset_num_timesteps=False)
    assert projection.cache[0].shape[0] == 16  # projection ran its forward passes on its memory
    assert seen.rows == {32}


def fresh_entries(model, cbp) -> dict[str, torch.Tensor]:
    """By parameter name, where continual backprop's last replacements left fresh entries (units of age 0:
    their incoming rows and biases, their outgoing columns)."""
    name_of = {id(p): name for name, p in model.policy.named_parameters()}
    fresh = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.policy.named_parameters()}
    for network in policy_networks(model.policy):
        for layer, linear in enumerate(network.hidden):
            units = torch.as_tensor(np.flatnonzero(cbp.ages[(network.name, layer)] == 0))
            fresh[name_of[id(linear.weight)]][units] = True
            fresh[name_of[id(linear.bias)]][units] = True
            fresh[name_of[id(network.outgoing(layer).weight)]][:, units] = True
    return fresh


def test_units_continual_backprop_replaces_restart_in_spg_ncl_and_l2_init():
    """SPG's mask, NCL's precision and anchor and L2-Init's θ_0 of a replaced unit's entries restart; every
    other entry keeps its state."""
    cbp = ContinualBackprop(replacement_rate=1 / 16, maturity=2, decay_rate=0.9)
    spg, ncl, l2 = SoftMasking(), NaturalContinualLearning(prior=1e-2, max_norm=1e6), L2Init(coef=0.0)
    model = make_model(activation=torch.nn.Tanh, tools=[cbp, spg, ncl, l2])
    parameters = {name: p for name, p in model.policy.named_parameters() if name != "log_std"}
    spg.mask = {name: torch.full_like(p, 0.9) for name, p in parameters.items()}
    ncl.precision = {name: torch.full_like(p, 5.0) for name, p in parameters.items()}
    ncl.anchor = {name: p.detach() + 0.1 for name, p in parameters.items()}
    l2.initial = {name: p.detach() - 0.1 for name, p in model.policy.named_parameters()}
    cbp.bind(model)
    obs = observations()
    for _ in range(3):  # mature after two steps: the third replaces one unit of every hidden layer
        training_step(model, obs)
    assert all(count == 1 for count in cbp.replaced.values())
    fresh = fresh_entries(model, cbp)
    for name, p in parameters.items():
        new, kept = fresh[name], ~fresh[name]
        assert torch.all(spg.mask[name][new] == 0) and torch.all(spg.mask[name][kept] == 0.9), name
        assert torch.all(ncl.precision[name][new] == ncl.prior) and torch.all(ncl.precision[name][kept] == 5)
        assert torch.equal(ncl.anchor[name][new], p.detach()[new]), name
        assert torch.equal(l2.initial[name][new], p.detach()[new]), name
        assert not torch.equal(l2.initial[name][kept], p.detach()[kept]), name
    assert any(fresh[name].any() for name in parameters)
    # Nothing pulls a fresh entry back toward the weights it replaced: g + Λ(θ − µ) = g there.
    model.policy.optimizer.zero_grad()
    minibatch = model.policy.evaluate_actions(obs, torch.zeros(len(obs), dtype=torch.long))
    (minibatch[0].pow(2).mean() - minibatch[1].mean()).backward()
    raw = {name: p.grad.clone() for name, p in parameters.items()}
    ncl.before_optimizer_step(model, model.policy.optimizer)
    for name, p in parameters.items():
        torch.testing.assert_close(p.grad[fresh[name]], raw[name][fresh[name]], msg=name)


def test_units_redo_resets_restart_in_continual_backprop():
    cbp, redo = ContinualBackprop(replacement_rate=0.0), ReDo(tau=0.025, every=1)
    model = make_model(tools=[cbp, redo])
    model.learn(64)  # a rollout to probe (ReDo) and activations to score (continual backprop)
    assert all(np.all(ages > 0) for ages in cbp.ages.values())
    actor = policy_networks(model.policy)[0]
    with torch.no_grad():
        actor.hidden[0].weight[5] = 0.0
        actor.hidden[0].bias[5] = -1.0  # ReLU(negative) = 0: unit 5 never fires
    before = sum(redo.reset.values())
    redo.on_rollout_end(model)
    key = ("actor", 0)
    assert cbp.ages[key][5] == 0 and cbp.utility[key][5] == 0 and cbp.mean[key][5] == 0
    restarted = sum(np.count_nonzero(ages == 0) for ages in cbp.ages.values())
    assert restarted == sum(redo.reset.values()) - before  # exactly the units ReDo reset
