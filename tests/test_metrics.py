"""Plasticity diagnostics on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from nested_ac.metrics import (
    distance_from_init,
    dormant_mask,
    dormant_ratio,
    effective_rank,
    global_grad_norm,
    mean_abs_weight,
    policy_entropy,
    singular_values,
    srank,
)


def test_a_unit_that_is_always_zero_is_dormant():
    h = torch.rand(100, 4) + 0.5
    h[:, 2] = 0.0
    assert dormant_mask(h).tolist() == [False, False, True, False]
    assert dormant_ratio([h, torch.ones(100, 4)]) == pytest.approx(1 / 8)


def test_a_nearly_silent_unit_is_dormant_by_its_score():
    h = torch.ones(10, 4)
    h[:, 0] = 0.02  # s_0 = 0.02 / mean(0.02, 1, 1, 1) = 0.0265 > 0.025: not dormant
    assert not dormant_mask(h)[0]
    h[:, 0] = 0.01  # s_0 = 0.01 / 0.7525 = 0.0133 ≤ 0.025: dormant
    assert dormant_mask(h).tolist() == [True, False, False, False]


def test_an_all_zero_layer_is_all_dormant():
    assert dormant_ratio([torch.zeros(5, 3)]) == 1.0


def test_rank_one_features():
    features = torch.outer(torch.arange(1.0, 11.0), torch.tensor([1.0, -2.0, 3.0]))
    assert srank(features) == 1
    assert effective_rank(features) == pytest.approx(1.0, abs=1e-4)


def test_equal_singular_values():
    features = torch.eye(8) * 3.0
    assert effective_rank(features) == pytest.approx(8.0, rel=1e-5)
    assert srank(features, delta=0.01) == 8  # needs 99 % of the mass: all 8
    assert srank(features, delta=0.5) == 4  # half of the mass: 4 of 8 equal values


def test_two_scales():
    features = torch.diag(torch.tensor([3.0, 1.0]))  # p = (0.75, 0.25)
    assert effective_rank(features) == pytest.approx(
        math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    )
    assert srank(features, delta=0.3) == 1 and srank(features, delta=0.2) == 2


def test_srank_never_exceeds_the_number_of_singular_values():
    generator = torch.Generator().manual_seed(0)
    for units in range(2, 30):
        features = torch.randn(64, units, generator=generator)
        sigma = singular_values(features)
        assert srank(features, delta=0.0) == srank(features, 0.0, sigma) <= units  # rounding: share < 1


def test_all_zero_features_have_rank_zero():
    assert srank(torch.zeros(4, 3)) == 0 and effective_rank(torch.zeros(4, 3)) == 0.0


def test_weights_distance_and_gradient_norm():
    a, b = torch.tensor([1.0, -3.0]), torch.tensor([[2.0]])
    assert mean_abs_weight(iter([a, b])) == pytest.approx(2.0)
    assert distance_from_init((x for x in [a + 3.0, b + 4.0]), [a, b]) == pytest.approx(math.sqrt(9 + 9 + 16))
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    p.grad = torch.tensor([3.0, 0.0])
    assert global_grad_norm([p, q]) == 3.0
    q.grad = torch.tensor([4.0])
    assert global_grad_norm([p, q]) == 5.0


def test_policy_entropy():
    uniform = torch.distributions.Categorical(logits=torch.zeros(3, 4))
    assert policy_entropy(uniform) == pytest.approx(math.log(4))
