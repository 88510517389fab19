"""UPGD and AdaptiveUPGD against the equations, their reductions to SGD/AdamW, state, seeding, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from stable_baselines3 import PPO

from nested_ac.optim import UPGD, AdaptiveUPGD


def reference_run(
    kind: str, params, grads_per_step, *, lr, wd, beta_u, protect, betas=(0.9, 0.999), eps=1e-5
):
    """A plain per-tensor transcription of the equations with σ = 0 (no noise)."""
    w = [p.clone() for p in params]
    U = [torch.zeros_like(p) for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            U[i] = beta_u * U[i] + (1 - beta_u) * (-g * w[i])
        U_hat = [u / (1 - beta_u**t) for u in U]
        eta = max(u.max() for u in U_hat)
        u_bar = [torch.sigmoid(u / eta) if eta > 0 else torch.full_like(u, 0.5) for u in U_hat]
        for i, g in enumerate(grads):
            gate = 1 - u_bar[i]
            if kind == "sgd":
                direction = g * gate
            else:
                m[i] = betas[0] * m[i] + (1 - betas[0]) * g
                v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
                m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
                adam = m_hat / (v_hat.sqrt() + eps)
                direction = adam * gate if protect else adam
            if kind == "sgd" and not protect:
                direction = g
            w[i] = (1 - lr * wd) * w[i] - lr * direction
    return w


def run(optimizer_class, params, grads_per_step, **kwargs):
    tensors = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = optimizer_class(tensors, **kwargs)
    for grads in grads_per_step:
        for p, g in zip(tensors, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in tensors], optimizer


def random_problem(seed=0, steps=5):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 7)]
    params = [torch.randn(s, generator=generator) for s in shapes]
    grads = [[torch.randn(s, generator=generator) for s in shapes] for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("kind, cls", [("sgd", UPGD), ("adam", AdaptiveUPGD)])
def test_update_matches_the_equations_with_zero_noise(kind, cls, protect):
    params, grads = random_problem()
    kwargs = dict(lr=0.05, weight_decay=0.1, beta_utility=0.9, protect=protect)
    got, _ = run(cls, params, grads, sigma=0.0, **kwargs)
    want = reference_run(kind, params, grads, lr=0.05, wd=0.1, beta_u=0.9, protect=protect)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_global_scaling_spans_every_group():
    params, grads = random_problem(steps=1)
    one_group, _ = run(AdaptiveUPGD, params, grads, sigma=0.0, beta_utility=0.9)
    tensors = [torch.nn.Parameter(p.clone()) for p in params]
    two_groups = AdaptiveUPGD([{"params": tensors[:1]}, {"params": tensors[1:]}], sigma=0.0, beta_utility=0.9)
    for p, g in zip(tensors, grads[0], strict=True):
        p.grad = g.clone()
    two_groups.step()
    for a, b in zip(one_group, tensors, strict=True):
        torch.testing.assert_close(a, b.detach())
    # Utilities are scaled by the max over both groups: the largest scaled utility sits in one group only.
    utilities = two_groups.scaled_utilities()
    top = max(float(u.max()) for u in utilities.values())
    assert top == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-5)


class NoUtility:
    """Forces ū ≡ 0 (gate 1) to check the reductions to SGD and AdamW."""

    def _gates(self, traces, correction, scale):
        return [torch.ones_like(t) for t in traces]


class SGDNoUtility(NoUtility, UPGD):
    pass


class AdamNoUtility(NoUtility, AdaptiveUPGD):
    pass


def test_reduces_to_sgd_with_decoupled_decay():
    params, grads = random_problem()
    got, _ = run(SGDNoUtility, params, grads, lr=0.1, weight_decay=0.01, sigma=0.0)
    want = [p.clone() for p in params]
    for step_grads in grads:
        want = [(1 - 0.1 * 0.01) * w - 0.1 * g for w, g in zip(want, step_grads, strict=True)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_reduces_to_adamw():
    params, grads = random_problem()
    got, _ = run(
        AdamNoUtility, params, grads, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, sigma=0.0
    )
    want, _ = run(torch.optim.AdamW, params, grads, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_zero_initialised_weights_give_half_utility_and_no_nan():
    weight = torch.nn.Parameter(torch.zeros(50, 50))
    optimizer = AdaptiveUPGD([weight], sigma=0.1, seed=0)
    weight.grad = torch.randn(50, 50)
    optimizer.step()
    assert torch.isfinite(weight).all()
    (utility,) = optimizer.scaled_utilities().values()
    assert torch.equal(utility, torch.full_like(utility, 0.5))


@pytest.mark.parametrize("protect", [True, False])
def test_noise_scale(protect):
    # Zero weights and zero gradients: no utility (ū = 0.5) and no Adam direction, so the step is pure noise,
    # lr·σ·(1 - ū) = lr·σ/2 in both variants.
    weight = torch.nn.Parameter(torch.zeros(400, 500))
    optimizer = AdaptiveUPGD([weight], lr=0.1, sigma=0.2, protect=protect, seed=1)
    weight.grad = torch.zeros_like(weight)
    optimizer.step()
    assert float(weight.detach().std()) == pytest.approx(0.1 * 0.2 * 0.5, rel=0.02)
    assert abs(float(weight.detach().mean())) < 1e-3


def test_same_seed_same_noise_other_seed_other_noise():
    params, grads = random_problem()
    a, _ = run(UPGD, params, grads, sigma=0.5, seed=3)
    b, _ = run(UPGD, params, grads, sigma=0.5, seed=3)
    c, _ = run(UPGD, params, grads, sigma=0.5, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))


def test_state_dict_round_trip_continues_identically():
    params, grads = random_problem(steps=6)
    straight, _ = run(AdaptiveUPGD, params, grads, sigma=0.1, seed=5)
    first, optimizer = run(AdaptiveUPGD, params, grads[:3], sigma=0.1, seed=5)
    saved = optimizer.state_dict()
    tensors = [torch.nn.Parameter(p.clone()) for p in first]
    restored = AdaptiveUPGD(tensors, sigma=0.1, seed=99)
    restored.load_state_dict(saved)
    assert set(restored.state[tensors[0]]) == {"step", "utility_trace", "exp_avg", "exp_avg_sq"}
    for step_grads in grads[3:]:
        for p, g in zip(tensors, step_grads, strict=True):
            p.grad = g.clone()
        restored.step()
    for x, y in zip(straight, tensors, strict=True):
        torch.testing.assert_close(x, y.detach(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "lr must be in >= 0.0"),
        (dict(sigma=-0.1), "sigma must be in >= 0.0"),
        (dict(weight_decay=-1e-3), "weight_decay must be in >= 0.0"),
        (dict(beta_utility=1.0), r"beta_utility must be in \[0.0, 1.0\)"),
        (dict(beta_utility=-0.1), r"beta_utility must be in \[0.0, 1.0\)"),
        (dict(betas=(1.0, 0.9)), r"betas\[0\] must be in \[0.0, 1.0\)"),
        (dict(betas=(0.9, -0.5)), r"betas\[1\] must be in \[0.0, 1.0\)"),
        (dict(eps=-1.0), "eps must be in >= 0.0"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveUPGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    if "betas" not in kwargs and "eps" not in kwargs:
        with pytest.raises(ValueError, match=message):
            UPGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("cls, lr", [(AdaptiveUPGD, 6e-4), (UPGD, 1e-2)])
def test_ppo_trains_saves_and_loads_with_upgd(tmp_path, cls, lr):
    model = PPO(
        "MlpPolicy",
        "CartPole-v1",
        learning_rate=lr,
        n_steps=256,
        batch_size=64,
        n_epochs=2,
        seed=0,
        policy_kwargs=dict(optimizer_class=cls, optimizer_kwargs=dict(sigma=1e-3, weight_decay=1e-3)),
    )
    before = [p.clone() for p in model.policy.parameters()]
    model.learn(2048)
    after = list(model.policy.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip")
    assert isinstance(loaded.policy.optimizer, cls)
    for p, q in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        torch.testing.assert_close(
            loaded.policy.optimizer.state[q]["utility_trace"],
            model.policy.optimizer.state[p]["utility_trace"],
        )
