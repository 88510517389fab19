"""Continual backprop and the plasticity baselines: what they change, when, and their bad input."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from agents import ContinualPPO
from nested_ac.networks import policy_networks
from nested_ac.plasticity import ContinualBackprop, L2Init, ReDo, ShrinkPerturb, optimizer_state_keys
from nested_ac.train import train
from tests.conftest import FAST, read_scalars
from tests.test_reliability import assert_same_final_run, cli_args, interrupt_at, small_config


def make_model(optimizer_class=torch.optim.Adam, net_arch=None, activation=torch.nn.ReLU):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    policy_kwargs = {
        "net_arch": net_arch or {"pi": [16, 16], "vf": [16, 16]},
        "activation_fn": activation,
        "optimizer_class": optimizer_class,
    }
    return ContinualPPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=0, policy_kwargs=policy_kwargs)


def observations(n=64):
    return torch.as_tensor(np.random.default_rng(0).normal(size=(n, 4)), dtype=torch.float32)


def training_step(model, obs):
    """One forward (recorded by the tools' hooks) and one optimizer step, as inside PPO's update."""
    values, log_prob, entropy = model.policy.evaluate_actions(obs, torch.zeros(len(obs), dtype=torch.long))
    loss = values.pow(2).mean() - log_prob.mean()
    model.policy.optimizer.zero_grad()
    loss.backward()
    model.policy.optimizer.step()  # ContinualPPO's post-step hook runs the tools


def outputs(model, obs):
    with torch.no_grad():
        distribution = model.policy.get_distribution(obs)
        return distribution.distribution.logits.clone(), model.policy.predict_values(obs).clone()


def test_replacing_a_dead_unit_keeps_outputs_and_resets_exactly_its_entries():
    model = make_model(activation=torch.nn.Tanh)  # tanh: no unit is dead by chance, as ReLU units can be
    cbp = ContinualBackprop(replacement_rate=1 / 16, maturity=2, decay_rate=0.9)
    model.plasticity_tools = [cbp]
    cbp.bind(model)
    obs = observations()
    for _ in range(2):  # immature: no replacement during the first m = 2 steps
        training_step(model, obs)
    assert all(count == 0 for count in cbp.replaced.values())
    # Step 3 without the tool, then the tool alone: every unit is mature, ρ·16 = 1 replacement per layer.
    model.plasticity_tools = []
    training_step(model, obs)
    model.plasticity_tools = [cbp]
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


def test_replacement_count_follows_rate_with_carry():
    model = make_model()
    cbp = ContinualBackprop(replacement_rate=0.1, maturity=0, decay_rate=0.9)
    model.plasticity_tools = [cbp]
    cbp.bind(model)
    obs = observations()
    for _ in range(10):
        training_step(model, obs)
    # 16 eligible units per layer, ρ·16 = 1.6 per step: 16 replacements over 10 steps, carry ≈ 0.
    assert cbp.replaced[("actor", 0)] == 16 and cbp.replaced[("critic", 1)] == 16
    assert cbp.carry[("actor", 0)] == pytest.approx(0.0, abs=1e-9)
    cbp_half = ContinualBackprop(replacement_rate=0.03, maturity=0)
    model.plasticity_tools = [cbp_half]
    cbp.recorder.remove()
    cbp_half.bind(model)
    for _ in range(3):
        training_step(model, obs)
    assert cbp_half.replaced[("actor", 0)] == 1 and cbp_half.carry[("actor", 0)] == pytest.approx(0.44)


def test_immature_units_are_never_replaced():
    model = make_model()
    cbp = ContinualBackprop(replacement_rate=1.0, maturity=5)
    model.plasticity_tools = [cbp]
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
    from nested_ac.optim import AdaptiveUPGD

    upgd = AdaptiveUPGD([torch.zeros(1, requires_grad=True)])
    assert optimizer_state_keys(upgd) == ("utility_trace", "exp_avg", "exp_avg_sq")
    model = make_model(torch.optim.RMSprop)
    with pytest.raises(ValueError, match="unknown optimizer state layout of RMSprop: supported are Adam"):
        ContinualBackprop().bind(model)


def test_upgd_traces_of_replaced_units_are_zeroed():
    from nested_ac.optim import AdaptiveUPGD

    model = make_model(AdaptiveUPGD)
    cbp = ContinualBackprop(replacement_rate=0.25, maturity=1)
    model.plasticity_tools = [cbp]
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
    tool = ShrinkPerturb("switch", alpha=0.25)
    current = [p.detach().clone() for p in model.policy.parameters()]
    tool.on_task_switch(model, model.policy.optimizer, task=0)  # the first task is no switch
    assert all(torch.equal(p, q) for p, q in zip(model.policy.parameters(), current, strict=True))
    tool.on_task_switch(model, model.policy.optimizer, task=1)
    moved = [not torch.equal(p, q) for p, q in zip(model.policy.parameters(), current, strict=True)]
    assert any(moved)


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
    model = make_model()
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
