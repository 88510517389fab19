"""The forgetting tools (SPG, A-GEM projection, NCL): each rule on hand-made tensors, then in training."""

from __future__ import annotations

import copy
import math
import signal

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from nested_ac.agents import ContinualPPO
from nested_ac.forgetting import (
    GradientProjection,
    NaturalContinualLearning,
    SoftMasking,
    ncl_gradient,
    project,
    spg_importance,
)
from nested_ac.hooks import Tool
from nested_ac.sweep import load_experiment
from nested_ac.train import train
from tests.conftest import FAST, read_scalars
from tests.test_plasticity import make_model, observations
from tests.test_reliability import assert_same_final_run, cli_args, interrupt_at, small_config
from tests.test_sweep import _flat

WEIGHT = "mlp_extractor.policy_net.0.weight"


def minibatch_loss(model: ContinualPPO) -> torch.Tensor:
    obs = observations()
    values, log_prob, _ = model.policy.evaluate_actions(obs, torch.zeros(len(obs), dtype=torch.long))
    return values.pow(2).mean() - log_prob.mean()


def after_a_switch(tool, model: ContinualPPO) -> None:
    """One rollout kept by ``tool``, then the task clock's first task and a switch to the next one."""
    model.tools = [tool]
    model.learn(total_timesteps=64)
    tool.on_task_switch(model, model.policy.optimizer, 0)
    tool.on_task_switch(model, model.policy.optimizer, 1)


def test_spg_importance_is_the_absolute_tanh_of_the_standardised_signed_gradient():
    """Konishi et al. (2023): γ = |tanh((g − mean g) / std g)|, on the signed gradient."""
    gradient = torch.tensor([[-3.0, 1.0], [0.0, 6.0]])  # mean 1, std √(16 + 0 + 1 + 25)/√3 = √14
    z = torch.tensor([[-4.0, 0.0], [-1.0, 5.0]]) / math.sqrt(14.0)
    assert torch.allclose(spg_importance(gradient), torch.tanh(z).abs())
    # By hand: |tanh(-4/√14)|, |tanh(0)|, |tanh(-1/√14)|, |tanh(5/√14)|. The entry 0, whose |g| lies below
    # the tensor's mean |g| (2.5), is protected too.
    expected = torch.tensor([[0.7891, 0.0], [0.2611, 0.8708]])
    assert torch.allclose(spg_importance(gradient), expected, atol=1e-4)
    assert torch.equal(spg_importance(torch.tensor([5.0])), torch.zeros(1))  # no spread: no importance
    assert torch.equal(spg_importance(torch.full((3,), -2.0)), torch.zeros(3))


def ppo_loss_by_formula(model: ContinualPPO, batch) -> torch.Tensor:
    """PPO's loss on ``batch`` (SB3's clipped surrogate, value and entropy terms), written out here."""
    actions = batch.actions.long().flatten()
    values, log_prob, entropy = model.policy.evaluate_actions(batch.observations, actions)
    advantages = (batch.advantages - batch.advantages.mean()) / (batch.advantages.std() + 1e-8)
    ratio = torch.exp(log_prob - batch.old_log_prob)
    surrogate = torch.min(advantages * ratio, advantages * torch.clamp(ratio, 0.8, 1.2))
    value_loss = (batch.returns - values.flatten()).pow(2).mean()
    return -surrogate.mean() - model.ent_coef * entropy.mean() + model.vf_coef * value_loss


def test_spg_consolidates_the_importance_of_the_ppo_loss_gradient_on_the_kept_rollout():
    model = make_model()
    spg = SoftMasking()
    after_a_switch(spg, model)  # the importance of the rollout kept before the switch, at the switch
    assert model.clip_range(1.0) == 0.2 and model.clip_range_vf is None
    parameters = {name: p for name, p in model.policy.named_parameters() if name != "log_std"}
    gradients = torch.autograd.grad(ppo_loss_by_formula(model, spg.ending_batch()), list(parameters.values()))
    assert set(spg.mask) == set(parameters)
    for name, gradient in zip(parameters, gradients, strict=True):
        torch.testing.assert_close(spg.mask[name], spg_importance(gradient), rtol=1e-4, atol=1e-5, msg=name)


def test_spg_with_full_mask_leaves_the_weight_unchanged_and_the_rest_learning():
    model = make_model()
    spg = SoftMasking()
    model.tools = [spg]
    parameters = dict(model.policy.named_parameters())
    spg.mask = {name: torch.zeros_like(p) for name, p in parameters.items() if name != "log_std"}
    spg.mask[WEIGHT] = torch.ones_like(parameters[WEIGHT])
    before = {name: p.detach().clone() for name, p in parameters.items()}
    model._optimizer_step(minibatch_loss(model), {})  # backward, clip, the tools' gradient hook, Adam's step
    assert torch.equal(parameters[WEIGHT], before[WEIGHT])
    assert not torch.equal(
        parameters["mlp_extractor.policy_net.2.weight"], before["mlp_extractor.policy_net.2.weight"]
    )
    # A half mask halves the gradient the optimizer sees.
    spg = SoftMasking()
    spg.mask = {WEIGHT: torch.full_like(parameters[WEIGHT], 0.5)}
    loss = minibatch_loss(model)
    model.policy.optimizer.zero_grad()
    loss.backward()
    raw = parameters[WEIGHT].grad.clone()
    spg.before_optimizer_step(model, model.policy.optimizer)
    assert torch.allclose(parameters[WEIGHT].grad, 0.5 * raw)


def test_spg_accumulates_the_maximum_importance_over_switches():
    model = make_model()
    spg = SoftMasking()
    after_a_switch(spg, model)
    first = {name: mask.clone() for name, mask in spg.mask.items()}
    assert WEIGHT in first and all(((m >= 0) & (m < 1)).all() for m in first.values())
    assert 0 < spg.masked_fraction["actor"] < 1 and "critic" in spg.masked_fraction
    with torch.no_grad():  # a different network, so a different importance at the next switch
        for p in model.policy.parameters():
            p.add_(torch.randn_like(p), alpha=0.3)
    spg.on_task_switch(model, model.policy.optimizer, 0)
    for name, mask in spg.mask.items():
        assert torch.all(mask >= first[name])
    assert any(not torch.equal(mask, first[name]) for name, mask in spg.mask.items())


def test_projection_of_an_opposed_gradient_is_orthogonal_to_the_reference():
    gradients = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])]
    references = [torch.tensor([-1.0, 1.0]), torch.tensor([[-1.0]])]
    assert project(gradients, references)  # g·g_ref = -1 - 2 = -3 < 0
    dot = sum(torch.sum(g * r) for g, r in zip(gradients, references, strict=True))
    assert dot.item() == pytest.approx(0.0, abs=1e-6)
    # g − (g·g_ref / ‖g_ref‖²)·g_ref with ‖g_ref‖² = 3: g + g_ref
    assert torch.allclose(gradients[0], torch.tensor([0.0, 1.0])) and torch.allclose(
        gradients[1], torch.ones(1, 1)
    )
    aligned = [torch.tensor([1.0, 2.0])]
    assert not project(aligned, [torch.tensor([1.0, 0.0])])
    assert torch.equal(aligned[0], torch.tensor([1.0, 2.0]))  # no conflict: unchanged


def test_projection_memory_holds_the_then_policy_and_constrains_only_other_tasks():
    model = make_model()
    projection = GradientProjection(memory_size=16)
    after_a_switch(projection, model)
    memory = projection.memory[0]
    assert memory["observations"].shape == (16, 4) and memory["values"].shape == (16,)
    loss = projection.reference_loss(model)  # the policy has not moved since: L_ref = 0 (to float rounding:
    assert loss is not None and loss.item() == pytest.approx(0.0, abs=1e-7)  # Categorical renormalises)
    projection.load_state_dict({**projection.state_dict(), "task": 0})  # back on task 0: its own memory
    assert projection.reference_loss(model) is None


def test_projected_training_step_does_not_raise_the_reference_loss_to_first_order():
    model = make_model()
    projection = GradientProjection(memory_size=32)
    after_a_switch(projection, model)
    with torch.no_grad():  # move away from the stored policy so that L_ref has a gradient
        for p in model.policy.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    model.policy.optimizer.zero_grad()
    (-minibatch_loss(model)).backward()
    parameters = [p for p in model.policy.parameters() if p.grad is not None]
    reference = torch.autograd.grad(projection.reference_loss(model), parameters, allow_unused=True)
    projection.before_optimizer_step(model, model.policy.optimizer)
    assert projection.conflicts == 1  # the minibatch's gradient conflicted with g_ref, and was projected
    dot = sum(torch.sum(p.grad * r) for p, r in zip(parameters, reference, strict=True) if r is not None)
    assert dot.item() >= -1e-6


def test_projection_spans_log_std_which_the_kl_to_the_stored_gaussian_policy_depends_on():
    """Pendulum: with the policy moved only in log_std since the switch, g_ref lives in log_std alone; a
    gradient that raises log_std further conflicts with it, and is projected."""
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = ContinualPPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=0)
    projection = GradientProjection(memory_size=32)
    after_a_switch(projection, model)
    with torch.no_grad():
        model.policy.log_std.add_(0.5)
    parameters = list(model.policy.parameters())
    reference = torch.autograd.grad(projection.reference_loss(model), parameters)
    log_std = model.policy.log_std
    assert reference[0] is not None and parameters[0] is log_std and torch.all(reference[0] > 0)
    for p in parameters:  # g: −1 on log_std only (widen the policy further), no gradient elsewhere
        p.grad = -torch.ones_like(p) if p is log_std else None
    projection.before_optimizer_step(model, model.policy.optimizer)
    assert projection.conflicts == 1 and projection.steps == 1
    dot = sum(torch.sum(p.grad * r) for p, r in zip(parameters, reference, strict=True) if p.grad is not None)
    assert dot.item() >= -1e-6
    # The same with a gradient on every network parameter too (where g_ref is 0: the means are unmoved).
    projection.steps = projection.conflicts = 0
    for p in parameters:
        p.grad = -torch.ones_like(p) if p is log_std else torch.full_like(p, 1e-3)
    projection.before_optimizer_step(model, model.policy.optimizer)
    assert projection.conflicts == 1
    dot = sum(torch.sum(p.grad * r) for p, r in zip(parameters, reference, strict=True))
    assert dot.item() >= -1e-6


def test_ncl_gradient_is_the_laplace_regularised_gradient_under_the_norm_cap():
    g = [torch.tensor([1.0, -2.0]), torch.tensor([4.0])]
    precision = [torch.tensor([2.0, 4.0]), torch.tensor([8.0])]
    theta = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    anchor = [torch.tensor([0.5, 1.0]), torch.tensor([1.0])]
    expected = [torch.tensor([1.0 + 2.0 * 0.5, -2.0 + 0.0]), torch.tensor([4.0 - 8.0])]  # g + Λ(θ − µ)
    uncapped = [t.clone() for t in g]
    assert not ncl_gradient(uncapped, precision, theta, anchor, max_norm=10.0)
    for got, want in zip(uncapped, expected, strict=True):
        assert torch.allclose(got, want)
    capped = [t.clone() for t in g]
    assert ncl_gradient(capped, precision, theta, anchor, max_norm=0.1)
    for got, want in zip(capped, expected, strict=True):
        assert torch.allclose(got, want * 0.1 / math.sqrt(24.0))


def test_ncl_fisher_is_the_mean_over_states_of_each_states_squared_score():
    """F = E_s[(∂/∂θ (log π(a|s) + V(s)))²] over several states: the square of each state's gradient, not of
    their mean."""
    model = make_model()
    ncl = NaturalContinualLearning(prior=0.5, fisher_samples=3, max_norm=1e6)
    after_a_switch(ncl, model)
    batch, parameters = ncl.ending_batch(), dict(model.policy.named_parameters())
    assert len(batch.observations) == 64
    squares = {name: torch.zeros_like(p) for name, p in parameters.items()}
    sums = {name: torch.zeros_like(p) for name, p in parameters.items()}
    for i in (0, 32, 63):  # three states evenly spaced over the rollout
        values, log_prob, _ = model.policy.evaluate_actions(
            batch.observations[i : i + 1], batch.actions[i : i + 1].long().flatten()
        )
        model.policy.optimizer.zero_grad()
        (values.sum() + log_prob.sum()).backward()
        for name, p in parameters.items():
            if p.grad is not None:
                squares[name] += p.grad.pow(2)
                sums[name] += p.grad
    for name, precision in ncl.precision.items():
        torch.testing.assert_close(precision, 0.5 + squares[name] / 3, msg=name)
    weight_fisher = ncl.precision[WEIGHT] - 0.5
    assert not torch.allclose(weight_fisher, (sums[WEIGHT] / 3).pow(2))  # the test tells the two apart


def with_ncl_state(model: ContinualPPO, ncl: NaturalContinualLearning) -> dict[str, torch.Tensor]:
    """``ncl`` given a precision Λ spread over four decades above its prior, and an anchor µ near θ, as if
    a task had ended; returns P = λΛ⁻¹ by parameter name."""
    generator = torch.Generator().manual_seed(1)
    for name, p in model.policy.named_parameters():
        if name != "log_std":
            ncl.precision[name] = ncl.prior * 10 ** (4 * torch.rand(p.shape, generator=generator))
            ncl.anchor[name] = p.detach() + 0.01 * torch.randn(p.shape, generator=generator)
    return {name: ncl.prior / precision for name, precision in ncl.precision.items()}


def one_step(model: ContinualPPO, tools: list) -> dict[str, torch.Tensor]:
    """The change of every parameter in one training step (backward, clipping, the tools, the optimizer)."""
    model.tools = tools
    before = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    model._optimizer_step(minibatch_loss(model), {})
    return {name: p.detach() - before[name] for name, p in model.policy.named_parameters()}


class LaplacePenalty(Tool):
    """EWC's gradient, written here: g ← g + Λ(θ − µ), capped at ``max_norm`` as NCL caps it."""

    def __init__(self, precision: dict, anchor: dict, max_norm: float) -> None:
        self.precision, self.anchor, self.max_norm = precision, anchor, max_norm

    @torch.no_grad()
    def before_optimizer_step(self, model, optimizer) -> None:
        parameters = dict(model.policy.named_parameters())
        for name, precision in self.precision.items():
            parameters[name].grad.add_(precision * (parameters[name] - self.anchor[name]))
        norm = torch.linalg.vector_norm(torch.cat([parameters[n].grad.flatten() for n in self.precision]))
        if norm > self.max_norm:
            for name in self.precision:
                parameters[name].grad.mul_(self.max_norm / norm)


@pytest.mark.parametrize("max_norm", [1e6, 0.5])
def test_ncl_step_under_adam_is_ewcs_step_preconditioned_by_the_precision(max_norm):
    """Kao et al.'s preconditioner survives Adam: the same Adam state, one step, and NCL's update is EWC's
    (Adam on the Laplace-regularised gradient) times P = λΛ⁻¹ — not EWC's itself, as it would be were Λ⁻¹
    applied to the gradient that Adam then normalises."""
    model = make_model()
    for _ in range(5):  # Adam with a history of moments
        one_step(model, [])
    ncl = NaturalContinualLearning(prior=1e-2, max_norm=max_norm)
    preconditioner = with_ncl_state(model, ncl)
    saved = copy.deepcopy((model.policy.state_dict(), model.policy.optimizer.state_dict()))
    ncl_step = one_step(model, [ncl])
    model.policy.load_state_dict(saved[0])
    model.policy.optimizer.load_state_dict(saved[1])
    ewc_step = one_step(model, [LaplacePenalty(ncl.precision, ncl.anchor, max_norm)])
    difference = norm = 0.0
    for name, step in ewc_step.items():
        expected = step * preconditioner[name] if name in preconditioner else step  # log_std: no NCL
        # Steps of ~1e-4 read off float32 weights of ~1: to within their rounding (~1e-7).
        torch.testing.assert_close(ncl_step[name], expected, rtol=1e-4, atol=2e-7, msg=name)
        difference += (ncl_step[name] - step).pow(2).sum().item()
        norm += step.pow(2).sum().item()
    assert difference > 0.25 * norm  # P spans four decades: NCL's step is far from EWC's
    assert ncl.capped == (max_norm == 0.5)


def test_ncl_step_under_sgd_is_kao_et_als_update():
    """θ ← θ − γΛ⁻¹(g + Λ(θ − µ)) with γ = lr·λ, g the clipped gradient."""
    model = make_model(torch.optim.SGD)
    model.policy.optimizer.param_groups[0]["lr"] = 1.0  # γ = 1e-2: steps well above float32 rounding
    ncl = NaturalContinualLearning(prior=1e-2, max_norm=1e6)
    with_ncl_state(model, ncl)
    parameters = dict(model.policy.named_parameters())
    model.policy.optimizer.zero_grad()
    minibatch_loss(model).backward()
    torch.nn.utils.clip_grad_norm_(model.policy.parameters(), model.max_grad_norm)
    gradient = {name: p.grad.clone() for name, p in parameters.items()}
    theta = {name: p.detach().clone() for name, p in parameters.items()}
    step = one_step(model, [ncl])
    lr, prior = model.policy.optimizer.param_groups[0]["lr"], ncl.prior
    for name, precision in ncl.precision.items():
        natural = gradient[name] / precision + (theta[name] - ncl.anchor[name])
        torch.testing.assert_close(step[name], -lr * prior * natural, rtol=1e-4, atol=2e-7, msg=name)


def test_ncl_precision_grows_by_the_fisher_and_the_anchor_is_the_switch_parameters():
    model = make_model()
    ncl = NaturalContinualLearning(prior=0.5, fisher_samples=1, max_norm=1e6)  # the Fisher of state 0
    after_a_switch(ncl, model)
    parameters = dict(model.policy.named_parameters())
    # By hand: the squared gradient of log π(a|s) + V(s) at the kept rollout's first state.
    batch = ncl.ending_batch()
    values, log_prob, _ = model.policy.evaluate_actions(
        batch.observations[:1], batch.actions[:1].long().flatten()
    )
    model.policy.optimizer.zero_grad()
    (values.sum() + log_prob.sum()).backward()
    for name, precision in ncl.precision.items():
        assert torch.allclose(precision, 0.5 + parameters[name].grad.pow(2)), name
        assert torch.equal(ncl.anchor[name], parameters[name])
    first = {name: p.clone() for name, p in ncl.precision.items()}
    ncl.on_task_switch(model, model.policy.optimizer, 0)  # a second switch adds a second Fisher
    for name, precision in ncl.precision.items():
        assert torch.allclose(precision, first[name] + parameters[name].grad.pow(2))
    # The gradient handed to the optimizer: g + Λ(θ − µ), here θ = µ.
    model.policy.optimizer.zero_grad()
    minibatch_loss(model).backward()
    raw = parameters[WEIGHT].grad.clone()
    ncl.before_optimizer_step(model, model.policy.optimizer)
    assert torch.equal(parameters[WEIGHT].grad, raw)


TOOLS = {
    "spg": ("spg/actor/masked_fraction",),
    "projection": ("projection/conflict_rate", "projection/memory_tasks"),
    "ncl": ("ncl/actor/precision_mean", "ncl/capped_fraction"),
}


@pytest.mark.parametrize("tool", list(TOOLS))
def test_each_tool_trains_on_a_cyclic_schedule_with_adam_and_upgd_ppo_and_nested(cli, tmp_path, tool):
    for agent, optimizer in (("ppo", "adam"), ("nested-ppo", "upgd")):
        code, _, err = cli(
            "train",
            *("--env", "nested_ac/TwoTaskCartPole-v0", "--agent", agent, "--optimizer", optimizer),
            *("--steps", "1536", "--n-envs", "2", "--run-dir", str(tmp_path), "--name", agent),
            *("--set", f"{tool}.enabled=true", "--set", "env.schedule.every=512"),
            *FAST,
        )
        assert code == 0, err
        scalars = read_scalars(tmp_path / agent)
        assert set(TOOLS[tool]) <= set(scalars), sorted(t for t in scalars if t.startswith(tool))
    assert [task for _, task in sorted(scalars["task/switch"])][:3] == [0, 1, 0]  # cyclic: A, B, A …
    if tool != "projection":
        assert f"{tool}/critic_2/{TOOLS[tool][0].split('/')[-1]}" in scalars  # every critic of nested-ppo


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("projection.memory_size=0", "projection.memory_size must be a positive integer, got 0"),
        ("ncl.prior=0", "ncl needs prior > 0, max_norm > 0 and fisher_samples > 0"),
        ("ncl.max_norm=-1", "max_norm=-1.0"),
        ("ncl.fisher_samples=0", "fisher_samples=0"),
        ("spg.enabled=maybe", "config key 'spg.enabled' expects bool"),
    ],
)
def test_bad_forgetting_settings_are_one_line_exit_2_nothing_written(cli, tmp_path, assignment, message):
    section = assignment.split(".")[0]
    code, _, err = cli(
        "train", "--run-dir", str(tmp_path), "--set", f"{section}.enabled=true", "--set", assignment, *FAST
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


def test_interrupted_run_with_every_forgetting_tool_resumes_exactly(cli, tmp_path, monkeypatch):
    extra = {"spg.enabled": True, "projection.enabled": True, "ncl.enabled": True, "ncl.fisher_samples": 32}
    reference = train(small_config(tmp_path, "reference", **extra)).run_dir
    assert "projection/conflict_rate" in read_scalars(reference)
    config = small_config(tmp_path, "run", **extra)
    # Stopped at step 3,968, just before the switch at 4,000: the resumed run consolidates the rollout it
    # kept in its checkpoint, not one it collected itself.
    interrupt_at(monkeypatch, 3900, signal.SIGTERM)
    settings = [arg for key, value in extra.items() for arg in ("--set", f"{key}={str(value).lower()}")]
    code, _, err = cli("train", "--no-progress", *settings, *cli_args(config))
    assert code == 143 and "interrupted at step 3,968" in err, err
    monkeypatch.undo()
    code, _, err = cli("train", "--resume", str(tmp_path / "run"))
    assert code == 0, err
    assert_same_final_run(tmp_path / "run", reference)


# What each variant of the shipped `forgetting` experiment may change relative to PPO-Adam: its own tool.
FORGETTING_VARIANTS = {
    "ppo-spg": ("spg.",),
    "ppo-projection": ("projection.",),
    "ppo-ncl": ("ncl.",),
    "nested-ppo": ("agent",),
    "nested-ppo-frozen": ("agent", "nested.freeze_outer_after"),
    "ppo-cbp": ("cbp.",),
}


def test_the_forgetting_experiment_recurs_tasks_and_varies_only_the_intervention(tmp_path):
    experiment = load_experiment("forgetting", tmp_path)
    assert {run.seed for run in experiment.runs} == set(range(10))
    by_variant = {run.variant: run.config for run in experiment.runs if run.seed == 0}
    assert list(by_variant) == ["ppo-adam", *FORGETTING_VARIANTS]
    baseline = by_variant["ppo-adam"]
    schedule = baseline.env.schedule
    assert schedule.kind == "cyclic" and len(schedule.tasks) >= 2
    assert baseline.steps // schedule.every >= 2 * len(schedule.tasks)  # every task comes back
    flat_baseline = _flat(baseline.to_dict())
    for variant, allowed in FORGETTING_VARIANTS.items():
        config = _flat(by_variant[variant].to_dict())
        changed = {key for key in config if config[key] != flat_baseline[key] and key != "run_dir"}
        assert changed and all(key.startswith(allowed) for key in changed), (variant, changed)
