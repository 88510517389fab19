"""UPGD and AdaptiveUPGD: the update against the equations, global scaling, the guard, the noise, the
reductions to SGD/AdamW, state (state_dict, copies), seeding, bad input, and use as an SB3 optimizer."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from stable_baselines3 import PPO

from nested_ac.optim import UPGD, AdaptiveUPGD, ElementwiseAdam, FlatAdam

FORMS = [("sgd", UPGD), ("adam", AdaptiveUPGD)]


# --- an independent transcription of the equations (per tensor, σ = 0) ----------------------------------
def reference_run(kind, groups, grads_per_step):
    """Plain per-tensor UPGD with σ = 0. ``groups``: dicts with ``params`` (tensors) and the hyperparameters;
    ``grads_per_step``: per step, per group, per parameter, a gradient or None (no step for that one)."""
    w = [[p.clone() for p in group["params"]] for group in groups]
    U = [[torch.zeros_like(p) for p in ps] for ps in w]
    m = [[torch.zeros_like(p) for p in ps] for ps in w]
    v = [[torch.zeros_like(p) for p in ps] for ps in w]
    t = [[0 for _ in ps] for ps in w]
    for grads in grads_per_step:
        for a, group in enumerate(groups):
            for i, g in enumerate(grads[a]):
                if g is not None:
                    t[a][i] += 1
                    U[a][i] = group["beta_u"] * U[a][i] + (1 - group["beta_u"]) * (-g * w[a][i])
        U_hat = {
            (a, i): U[a][i] / (1 - group["beta_u"] ** t[a][i])
            for a, group in enumerate(groups)
            for i in range(len(w[a]))
            if t[a][i] > 0
        }
        eta = max(float(u.max()) for u in U_hat.values())
        for a, group in enumerate(groups):
            lr, wd = group["lr"], group["wd"]
            for i, g in enumerate(grads[a]):
                if g is None:
                    continue
                if eta > 0 and math.isfinite(eta):
                    u_bar = torch.sigmoid(U_hat[(a, i)] / eta)
                else:
                    u_bar = torch.full_like(g, 0.5)
                if kind == "sgd":
                    if group["protect"]:
                        step = g * (1 - u_bar)
                    else:
                        step = g
                else:
                    b1, b2 = group["betas"]
                    m[a][i] = b1 * m[a][i] + (1 - b1) * g
                    v[a][i] = b2 * v[a][i] + (1 - b2) * g * g
                    m_hat = m[a][i] / (1 - b1 ** t[a][i])
                    v_hat = v[a][i] / (1 - b2 ** t[a][i])
                    if group["protect"]:
                        step = m_hat * (1 - u_bar) / (v_hat.sqrt() + group["eps"])
                    else:
                        step = m_hat / (v_hat.sqrt() + group["eps"])
                w[a][i] = (1 - lr * wd) * w[a][i] - lr * step
    return w, U


def optimizer_kwargs(kind, group):
    kwargs = dict(
        lr=group["lr"],
        weight_decay=group["wd"],
        beta_utility=group["beta_u"],
        protect=group["protect"],
        sigma=0.0,
    )
    if kind == "adam":
        kwargs.update(betas=group["betas"], eps=group["eps"])
    return kwargs


def random_tensors(shapes, generator, dtype=torch.float64):
    return [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]


SHAPES = [(7, 5), (5,), (3, 7)]


def set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.clone()


@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("kind, cls", FORMS)
def test_update_matches_the_equations_with_zero_noise(kind, cls, protect):
    generator = torch.Generator().manual_seed(0)
    group = dict(lr=0.05, wd=0.1, beta_u=0.9, protect=protect, betas=(0.8, 0.95), eps=1e-3)
    params = random_tensors(SHAPES, generator)
    grads = [[random_tensors(SHAPES, generator)] for _ in range(6)]
    want, want_traces = reference_run(kind, [dict(group, params=params)], grads)
    tensors = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = cls(tensors, **optimizer_kwargs(kind, group))
    for step_grads in grads:
        set_grads(tensors, step_grads[0])
        optimizer.step()
    for got, expected, trace in zip(tensors, want[0], want_traces[0], strict=True):
        torch.testing.assert_close(got.detach(), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(optimizer.state[got]["utility_trace"], trace, rtol=1e-12, atol=1e-12)
        assert torch.equal(optimizer.state[got]["step"], torch.tensor(6.0, dtype=torch.float64))


@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("kind, cls", FORMS)
def test_groups_with_own_hyperparameters_and_parameters_that_skip_steps(kind, cls, protect):
    """Two groups (own lr, λ, β_u, β), float32; one parameter has no gradient on some steps: its step
    count lags (own bias corrections), and its trace still counts towards η on the steps it skips."""
    generator = torch.Generator().manual_seed(1)
    groups = [
        dict(lr=0.03, wd=0.0, beta_u=0.8, protect=protect, betas=(0.9, 0.99), eps=1e-4),
        dict(lr=0.1, wd=0.05, beta_u=0.95, protect=protect, betas=(0.7, 0.9), eps=1e-6),
    ]
    params = random_tensors(SHAPES, generator, torch.float32)
    groups[0]["params"], groups[1]["params"] = params[:1], params[1:]
    grads = []
    for step in range(7):
        g = random_tensors(SHAPES, generator, torch.float32)
        grads.append([[g[0]], [None if step in (2, 3, 5) else g[1], g[2]]])
    want, _ = reference_run(kind, groups, grads)
    tensors = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = cls(
        [
            dict(params=tensors[:1], **optimizer_kwargs(kind, groups[0])),
            dict(params=tensors[1:], **optimizer_kwargs(kind, groups[1])),
        ]
    )
    for step_grads in grads:
        set_grads(tensors[:1], step_grads[0])
        set_grads(tensors[1:], step_grads[1])
        optimizer.step()
    for got, expected in zip(tensors, want[0] + want[1], strict=True):
        torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)
    assert int(optimizer.state[tensors[1]]["step"]) == 4 and int(optimizer.state[tensors[2]]["step"]) == 7


@pytest.mark.parametrize("kind, cls", FORMS)
def test_global_scaling_spans_every_parameter_and_group(kind, cls):
    # β_u = 0: Û = -g ⊙ w after one step. Parameter a has utilities up to 8, parameter b up to 1.
    a = torch.nn.Parameter(torch.tensor([2.0, -1.0, 4.0]))
    b = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
    grads = {a: torch.tensor([-1.0, 1.0, -2.0]), b: torch.tensor([-1.0, 1.0])}

    def scaled(groups):
        optimizer = cls(groups, beta_utility=0.0, sigma=0.0, lr=0.0)
        for p, g in grads.items():
            p.grad = g.clone()
        optimizer.step()
        return optimizer.scaled_utilities()

    together = scaled([{"params": [a]}, {"params": [b]}])
    alone = scaled([b])
    torch.testing.assert_close(together[a], torch.sigmoid(torch.tensor([2.0, 1.0, 8.0]) / 8))
    torch.testing.assert_close(together[b], torch.sigmoid(torch.tensor([1.0, -0.5]) / 8))
    torch.testing.assert_close(alone[b], torch.sigmoid(torch.tensor([1.0, -0.5]) / 1))


def test_global_scaling_sets_the_step_of_each_group():
    # The step of b depends on a's utilities: with a's larger utilities b is protected less.
    def step_of_b(with_a):
        b = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
        groups = [{"params": [b]}]
        if with_a:
            a = torch.nn.Parameter(torch.tensor([2.0, 4.0]))
            a.grad = torch.tensor([-1.0, -2.0])
            groups.append({"params": [a]})
        b.grad = torch.tensor([-1.0, 1.0])
        UPGD(groups, lr=1.0, beta_utility=0.0, sigma=0.0).step()
        return b.detach() - torch.tensor([1.0, 0.5])

    utilities_b = torch.tensor([1.0, -0.5])
    g = torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(step_of_b(False), -g * (1 - torch.sigmoid(utilities_b / 1.0)))
    torch.testing.assert_close(step_of_b(True), -g * (1 - torch.sigmoid(utilities_b / 8.0)))


# --- the guard -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, cls", FORMS)
def test_zero_initialised_weights_give_half_utility_and_no_nan(kind, cls):
    weight = torch.nn.Parameter(torch.zeros(50, 50))
    bias = torch.nn.Parameter(torch.zeros(50))
    optimizer = cls([weight, bias], sigma=0.1, seed=0)
    for _ in range(3):
        weight.grad, bias.grad = torch.randn(50, 50), torch.randn(50)
        optimizer.step()
        assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
        weight.data.zero_()
        bias.data.zero_()
    utilities = optimizer.scaled_utilities()
    assert set(utilities) == {weight, bias}
    for utility in utilities.values():
        assert torch.equal(utility, torch.full_like(utility, 0.5))


def test_only_negative_utilities_give_half_utility():
    # g = w makes every utility -w² ≤ 0, so η ≤ 0: the guard gives ū = 0.5 and the step -lr·g/2.
    weight = torch.nn.Parameter(torch.randn(20))
    start = weight.detach().clone()
    weight.grad = start.clone()
    optimizer = UPGD([weight], lr=0.1, sigma=0.0)
    optimizer.step()
    (utility,) = optimizer.scaled_utilities().values()
    assert torch.equal(utility, torch.full_like(utility, 0.5))
    torch.testing.assert_close(weight.detach(), start - 0.1 * start * 0.5)


def test_non_finite_eta_gives_half_utility():
    weight = torch.nn.Parameter(torch.randn(2, 3))
    other = torch.nn.Parameter(torch.randn(4))
    optimizer = AdaptiveUPGD([weight, other], sigma=0.0)
    weight.grad, other.grad = torch.randn(2, 3), torch.randn(4)
    optimizer.step()
    optimizer.state[other]["utility_trace"][0] = float("nan")  # η is NaN: every finite trace gets ū = 0.5
    utilities = optimizer.scaled_utilities()
    assert torch.equal(utilities[weight], torch.full((2, 3), 0.5))
    assert torch.equal(utilities[other][1:], torch.full((3,), 0.5))


# --- the noise -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("kind, cls", FORMS)
def test_noise_is_gaussian_with_std_sigma_gated_by_one_minus_utility(kind, cls, protect):
    """Recover ξ from one step with known utilities (β_u = 0, float64) and check ξ ~ N(0, σ²) both where
    1 - ū is small and where it is large, so the noise is gated per weight exactly as the equations say."""
    generator = torch.Generator().manual_seed(2)
    shape = (400, 500)
    w0 = torch.randn(shape, generator=generator, dtype=torch.float64)
    w0 = w0.sign() * (0.5 + w0.abs())
    target = torch.rand(shape, generator=generator, dtype=torch.float64) * 6 - 5  # utilities in (-5, 1)
    g = -target / w0
    lr, sigma = 0.1, 0.3
    weight = torch.nn.Parameter(w0.clone())
    weight.grad = g.clone()
    kwargs = dict(eps=1e-8) if kind == "adam" else {}
    cls([weight], lr=lr, sigma=sigma, beta_utility=0.0, protect=protect, seed=3, **kwargs).step()
    utility = -g * w0
    gate = 1 - torch.sigmoid(utility / utility.max())
    direction = g if kind == "sgd" else g / (g.abs() + 1e-8)  # first Adam step: m̂ = g, v̂ = g²
    step = (w0 - weight.detach()) / lr
    xi = step / gate - direction if protect else (step - direction) / gate
    assert abs(float(xi.mean())) < 0.01 * sigma
    assert float(xi.std()) == pytest.approx(sigma, rel=0.01)
    for part in (xi[gate < 0.4], xi[gate > 0.9]):  # both ends of the gate
        assert part.numel() > 10_000
        assert float(part.std()) == pytest.approx(sigma, rel=0.03)


@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("kind, cls", FORMS)
def test_noise_scale_at_zero_utility(kind, cls, protect):
    # Zero weights and gradients: utility 0 (ū = 0.5 by the guard), no gradient direction: the step is pure
    # noise of std lr·σ·(1 - ū) = lr·σ/2.
    weight = torch.nn.Parameter(torch.zeros(400, 500))
    optimizer = cls([weight], lr=0.1, sigma=0.2, protect=protect, seed=1)
    weight.grad = torch.zeros_like(weight)
    optimizer.step()
    assert float(weight.detach().std()) == pytest.approx(0.1 * 0.2 * 0.5, rel=0.02)
    assert abs(float(weight.detach().mean())) < 1e-4


def test_each_group_gets_its_own_sigma():
    a = torch.nn.Parameter(torch.zeros(300, 300))
    b = torch.nn.Parameter(torch.zeros(300, 300))
    c = torch.nn.Parameter(torch.zeros(300, 300))
    optimizer = UPGD(
        [{"params": [a], "sigma": 0.1}, {"params": [b], "sigma": 0.4}, {"params": [c], "sigma": 0.0}],
        lr=1.0,
        seed=0,
    )
    for p in (a, b, c):
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert float(a.detach().std()) == pytest.approx(0.05, rel=0.02)
    assert float(b.detach().std()) == pytest.approx(0.2, rel=0.02)
    assert torch.equal(c.detach(), torch.zeros(300, 300))
    assert abs(float(torch.corrcoef(torch.stack([a.detach().flatten(), b.detach().flatten()]))[0, 1])) < 0.02


# --- reductions ------------------------------------------------------------------------------------------
class NoUtilityMixin:
    """Forces ū ≡ 0 through the documented hook ``_gates`` (which returns 1 - ū)."""

    def _gates(self, traces, divisor):
        return [torch.ones_like(trace) for trace in traces]


class SGDNoUtility(NoUtilityMixin, UPGD):
    pass


class AdamNoUtility(NoUtilityMixin, AdaptiveUPGD):
    pass


def run(optimizer_class, params, grads_per_step, **kwargs):
    tensors = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = optimizer_class(tensors, **kwargs)
    for grads in grads_per_step:
        set_grads(tensors, grads)
        optimizer.step()
    return [p.detach() for p in tensors], optimizer


def random_problem(seed=0, steps=5, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    params = random_tensors(SHAPES, generator, dtype)
    return params, [random_tensors(SHAPES, generator, dtype) for _ in range(steps)]


@pytest.mark.parametrize("protect", [True, False])
def test_sgd_form_reduces_to_sgd_with_decoupled_decay(protect):
    params, grads = random_problem()
    got, _ = run(SGDNoUtility, params, grads, lr=0.1, weight_decay=0.01, sigma=0.0, protect=protect)
    want = [p.clone() for p in params]
    for step_grads in grads:
        want = [(1 - 0.1 * 0.01) * w - 0.1 * g for w, g in zip(want, step_grads, strict=True)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    plain, _ = run(SGDNoUtility, params, grads, lr=0.1, sigma=0.0, protect=protect)
    sgd, _ = run(torch.optim.SGD, params, grads, lr=0.1)
    for g, w in zip(plain, sgd, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adaptive_form_reduces_to_adamw(protect, weight_decay):
    params, grads = random_problem(steps=8)
    kwargs = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    got, _ = run(AdamNoUtility, params, grads, sigma=0.0, protect=protect, **kwargs)
    want, _ = run(torch.optim.AdamW, params, grads, **kwargs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    if weight_decay == 0.0:
        adam, _ = run(torch.optim.Adam, params, grads, lr=0.01, betas=(0.8, 0.99), eps=1e-6)
        for g, w in zip(got, adam, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("betas", [(0.8, 0.99), (0.0, 0.999), (0.9, 0.0)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_elementwise_adam_is_adamw_while_nothing_is_reset(betas, weight_decay):
    params, grads = random_problem(steps=8)
    kwargs = dict(lr=0.01, betas=betas, eps=1e-6, weight_decay=weight_decay)
    got, optimizer = run(ElementwiseAdam, params, grads, **kwargs)
    want, _ = run(torch.optim.AdamW, params, grads, **kwargs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    assert all(torch.all(state["step"] == 8) for state in optimizer.state.values())


def test_elementwise_adam_bias_corrections_past_the_first_table_chunk():
    params, grads = random_problem(steps=1)
    grads = grads * 4200  # more steps than one chunk of the bias-correction table holds
    got, _ = run(ElementwiseAdam, params, grads, lr=1e-3, betas=(0.9, 0.9999))
    want, _ = run(torch.optim.Adam, params, grads, lr=1e-3, betas=(0.9, 0.9999))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_elementwise_adam_state_is_views_of_flat_tensors_and_survives_replacement_and_reloading():
    params, grads = random_problem(steps=6)
    uninterrupted, _ = run(ElementwiseAdam, params, grads, lr=0.01)
    first, optimizer = run(ElementwiseAdam, params, grads[:3], lr=0.01)
    states = list(optimizer.state.values())
    assert len({state["exp_avg"].untyped_storage().data_ptr() for state in states}) == 1  # one flat tensor
    states[0]["exp_avg_sq"] = states[0]["exp_avg_sq"].clone()  # replaced from outside: its values are kept
    restored = [torch.nn.Parameter(p.clone()) for p in first]
    reloaded = ElementwiseAdam(restored, lr=0.01)
    reloaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for tensors, opt in ((first, optimizer), (restored, reloaded)):
        tensors = list(opt.param_groups[0]["params"])
        for step_grads in grads[3:]:
            set_grads(tensors, step_grads)
            opt.step()
    for a, b, c in zip(uninterrupted, optimizer.param_groups[0]["params"], restored, strict=True):
        assert torch.equal(a, b.detach()) and torch.equal(a, c.detach())  # bit for bit


@pytest.mark.parametrize("betas", [(0.8, 0.99), (0.9, 0.999)])
def test_flat_adam_is_torch_adam_on_flat_tensors(betas):
    params, grads = random_problem(steps=8)
    got, optimizer = run(FlatAdam, params, grads, lr=0.01, betas=betas, eps=1e-6)
    want, reference = run(torch.optim.Adam, params, grads, lr=0.01, betas=betas, eps=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    assert optimizer._flat  # the flat step ran, not torch's
    states = list(optimizer.state.values())
    assert len({state["exp_avg_sq"].untyped_storage().data_ptr() for state in states}) == 1  # one flat tensor
    for ours, torchs in zip(states, reference.state.values(), strict=True):  # torch's state, torch's layout
        assert ours.keys() == torchs.keys() and float(ours["step"]) == float(torchs["step"]) == 8
        torch.testing.assert_close(ours["exp_avg_sq"], torchs["exp_avg_sq"], rtol=1e-6, atol=1e-9)


def test_flat_adam_resumes_from_its_own_and_torch_adams_state_and_falls_back_where_flat_does_not_apply():
    params, grads = random_problem(steps=6)
    uninterrupted, _ = run(FlatAdam, params, grads, lr=0.01)
    for first_class in (FlatAdam, torch.optim.Adam):
        first, optimizer = run(first_class, params, grads[:3], lr=0.01)
        restored = [torch.nn.Parameter(p.clone()) for p in first]
        reloaded = FlatAdam(restored, lr=0.01)
        reloaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for step_grads in grads[3:]:
            set_grads(restored, step_grads)
            reloaded.step()
        for a, b in zip(uninterrupted, restored, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
    # Adam's weight decay (L2 in the gradient) takes torch's own step
    decayed, optimizer = run(FlatAdam, params, grads, lr=0.01, weight_decay=0.1)
    want, _ = run(torch.optim.Adam, params, grads, lr=0.01, weight_decay=0.1)
    assert not optimizer._flat
    for g, w in zip(decayed, want, strict=True):
        assert torch.equal(g, w)


def test_non_protecting_adaptive_form_without_noise_is_adamw_whatever_the_utility():
    params, grads = random_problem(steps=8)
    kwargs = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.01)
    got, _ = run(AdaptiveUPGD, params, grads, sigma=0.0, protect=False, **kwargs)
    want, _ = run(torch.optim.AdamW, params, grads, **kwargs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


# --- state, copies, seeding ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, cls", FORMS)
def test_state_layout(kind, cls):
    weight = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = cls([weight])
    weight.grad = torch.randn(3, 2)
    optimizer.step()
    state = optimizer.state[weight]
    keys = {"step", "utility_trace"} | ({"exp_avg", "exp_avg_sq"} if kind == "adam" else set())
    assert set(state) == keys and set(optimizer.per_parameter_state_keys) == keys - {"step"}
    assert state["step"].shape == () and float(state["step"]) == 1.0 and state["step"].device.type == "cpu"
    for key in keys - {"step"}:
        assert state[key].shape == weight.shape
    per_element = cls([weight], per_element_steps=True)  # a step count per weight, reset with the others
    per_element.step()
    state = per_element.state[weight]
    assert set(state) == keys and set(per_element.per_parameter_state_keys) == keys
    assert state["step"].shape == weight.shape and torch.all(state["step"] == 1)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("kind, cls", FORMS)
def test_flat_steps_equal_per_parameter_steps_bit_for_bit(kind, cls, protect, weight_decay):
    """Where every parameter has a gradient and all share one step count, a step runs on flat views of the
    state (one tensor per group); it must give exactly the numbers of the per-parameter step, noise
    included. Two groups, one without noise; then a step where one parameter has no gradient, after which
    the step counts differ and the per-parameter step takes over."""
    shapes = [(8, 4), (8,), (8, 8), (8,), (2, 8), (2,)]

    def run(flat: bool):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
        groups = [{"params": params[:4]}, {"params": params[4:], "lr": 1e-3, "sigma": 0.0}]
        optimizer = cls(groups, lr=1e-2, sigma=1e-2, protect=protect, weight_decay=weight_decay, seed=1)
        if not flat:
            optimizer._flat_layout = lambda: None
        generator = torch.Generator().manual_seed(2)
        used = []
        for step in range(14):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            if step == 10:
                params[4].grad = None
            optimizer.step()
            used.append(optimizer._flat is not None)
        return params, optimizer, used

    (flat_params, flat, used), (params, reference, _) = run(flat=True), run(flat=False)
    assert used == [False] + [True] * 9 + [False] * 4  # the first step makes the state
    assert all(torch.equal(p, q) for p, q in zip(flat_params, params, strict=True))
    ours, theirs = flat.state_dict()["state"], reference.state_dict()["state"]
    assert all(torch.equal(ours[i][key], theirs[i][key]) for i in theirs for key in theirs[i])
    assert float(ours[4]["step"]) == 13 and float(ours[0]["step"]) == 14


def continue_with(optimizer, tensors, grads_per_step):
    for grads in grads_per_step:
        set_grads(tensors, grads)
        optimizer.step()
    return [p.detach().clone() for p in tensors]


@pytest.mark.parametrize("kind, cls", FORMS)
def test_state_dict_round_trip_continues_identically(kind, cls):
    params, grads = random_problem(steps=6)
    straight, _ = run(cls, params, grads, sigma=0.1, seed=5)
    first, optimizer = run(cls, params, grads[:3], sigma=0.1, seed=5)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what SB3 does
    tensors = [torch.nn.Parameter(p.clone()) for p in first]
    restored = cls(tensors, sigma=0.1, seed=99)
    restored.load_state_dict(saved)
    for p, q in zip(optimizer.param_groups[0]["params"], tensors, strict=True):
        for key, value in optimizer.state[p].items():
            assert torch.equal(restored.state[q][key], value)
    for x, y in zip(straight, continue_with(restored, tensors, grads[3:]), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_copies_and_pickles_continue_identically(duplicate):
    params, grads = random_problem(steps=6)
    _, optimizer = run(AdaptiveUPGD, params, grads[:3], sigma=0.1, generator=torch.Generator().manual_seed(1))
    twin = duplicate(optimizer)
    original_params = optimizer.param_groups[0]["params"]
    twin_params = twin.param_groups[0]["params"]
    a = continue_with(optimizer, original_params, grads[3:])
    b = continue_with(twin, twin_params, grads[3:])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_generator_state_from_another_device_loads_deterministically():
    # A state saved on a GPU, loaded where there is none: the noise is reseeded from the saved state.
    params, grads = random_problem(steps=4)
    _, optimizer = run(AdaptiveUPGD, params, grads[:2], sigma=0.1, seed=0)
    saved = optimizer.state_dict()
    saved.update(noise_generator=torch.arange(16, dtype=torch.uint8), noise_generator_device="cuda")
    results = []
    for _ in range(2):
        tensors = [torch.nn.Parameter(p.detach().clone()) for p in optimizer.param_groups[0]["params"]]
        restored = AdaptiveUPGD(tensors, sigma=0.1)
        restored.load_state_dict(copy.deepcopy(saved))
        results.append(continue_with(restored, tensors, grads[2:]))
    assert all(torch.equal(x, y) for x, y in zip(*results, strict=True))
    assert all(torch.isfinite(x).all() for x in results[0])


def test_same_seed_same_noise_other_seed_other_noise():
    params, grads = random_problem()
    a, _ = run(UPGD, params, grads, sigma=0.5, seed=3)
    b, _ = run(UPGD, params, grads, sigma=0.5, seed=3)
    c, _ = run(UPGD, params, grads, sigma=0.5, seed=4)
    d, _ = run(UPGD, params, grads, sigma=0.5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a, d, strict=True))
    assert not any(torch.equal(x, z) for x, z in zip(a, c, strict=True))


def test_without_a_seed_the_noise_follows_the_global_torch_seed():
    params, grads = random_problem()
    torch.manual_seed(7)
    a, _ = run(AdaptiveUPGD, params, grads, sigma=0.5)
    torch.manual_seed(7)
    b, _ = run(AdaptiveUPGD, params, grads, sigma=0.5)
    c, _ = run(AdaptiveUPGD, params, grads, sigma=0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, z) for x, z in zip(a, c, strict=True))


def test_a_given_generator_is_used_and_advanced():
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    weight = torch.nn.Parameter(torch.zeros(10))
    weight.grad = torch.zeros(10)
    UPGD([weight], generator=generator).step()
    assert not torch.equal(generator.get_state(), before)


def test_closure_is_evaluated_with_gradients():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = UPGD([weight], lr=0.1, sigma=0.0)

    def closure():
        optimizer.zero_grad()
        loss = (weight**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert float(loss.detach()) == 5.0
    assert not torch.equal(weight.detach(), torch.tensor([1.0, -2.0]))


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "group, message",
    [
        (dict(lr=-0.1), "lr must be in >= 0.0, got -0.1"),
        (dict(sigma=-1.0), "sigma must be in >= 0.0, got -1.0"),
        (dict(beta_utility=1.5), r"beta_utility must be in \[0.0, 1.0\), got 1.5"),
        (dict(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0.0, 1.0\), got 1.0"),
        (dict(eps=-1e-8), "eps must be in >= 0.0, got -1e-08"),
    ],
)
def test_bad_hyperparameters_of_a_group(group, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveUPGD([{"params": [torch.nn.Parameter(torch.zeros(2))], **group}])
    optimizer = AdaptiveUPGD([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=message):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], **group})
    assert len(optimizer.param_groups) == 1


def test_generator_must_be_a_torch_generator():
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        UPGD([torch.nn.Parameter(torch.zeros(2))], generator=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), r"lr must be in >= 0.0, got -1.0"),
        (dict(sigma=-0.1), r"sigma must be in >= 0.0, got -0.1"),
        (dict(weight_decay=-1e-3), r"weight_decay must be in >= 0.0, got -0.001"),
        (dict(beta_utility=1.0), r"beta_utility must be in \[0.0, 1.0\), got 1.0"),
        (dict(beta_utility=-0.1), r"beta_utility must be in \[0.0, 1.0\), got -0.1"),
        (dict(beta_utility=float("nan")), r"beta_utility must be in \[0.0, 1.0\), got nan"),
        (dict(betas=(1.0, 0.9)), r"betas\[0\] must be in \[0.0, 1.0\), got 1.0"),
        (dict(betas=(0.9, -0.5)), r"betas\[1\] must be in \[0.0, 1.0\), got -0.5"),
        (dict(eps=-1.0), r"eps must be in >= 0.0, got -1.0"),
        (dict(seed=1, generator=torch.Generator()), "pass generator or seed, not both"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveUPGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    if "betas" not in kwargs and "eps" not in kwargs:
        with pytest.raises(ValueError, match=message):
            UPGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)


# --- drop-in for Stable-Baselines3 -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, lr, steps", [(AdaptiveUPGD, 6e-4, 2048), (UPGD, 1e-2, 512)], ids=["AdaptiveUPGD", "UPGD"]
)
def test_ppo_trains_saves_and_loads(tmp_path, cls, lr, steps):
    model = PPO(
        "MlpPolicy",
        "CartPole-v1",
        learning_rate=lr,
        n_steps=256,
        batch_size=64,
        n_epochs=2,
        seed=0,
        device="cpu",
        policy_kwargs=dict(optimizer_class=cls, optimizer_kwargs=dict(sigma=1e-3, weight_decay=1e-3)),
    )
    assert isinstance(model.policy.optimizer, cls)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(steps)
    after = list(model.policy.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    utilities = model.policy.optimizer.scaled_utilities()
    assert set(utilities) == set(after)
    assert all(((u > 0) & (u < 1)).all() for u in utilities.values())

    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip", device="cpu")
    optimizer, restored = model.policy.optimizer, loaded.policy.optimizer
    assert isinstance(restored, cls)
    pairs = list(zip(model.policy.parameters(), loaded.policy.parameters(), strict=True))
    for p, q in pairs:
        assert set(restored.state[q]) == set(optimizer.state[p])
        for key, value in optimizer.state[p].items():
            assert torch.equal(restored.state[q][key], value)
    # The same gradients give the same next step (noise included).
    generator = torch.Generator().manual_seed(0)
    for p, q in pairs:
        p.grad = torch.randn(p.shape, generator=generator)
        q.grad = p.grad.clone()
    optimizer.step()
    restored.step()
    for p, q in pairs:
        assert torch.equal(p.detach(), q.detach())
