"""UPGD, Adam form (Elsayed & Mahmood, ICLR 2024): the form used with PPO."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from nested_ac.optim.common import (
    ParamsT,
    add_scalar_,
    check_adam_hyperparameters,
    elementwise_corrected_moments,
    update_moments,
)
from nested_ac.optim.utility import Bucket, UtilityOptimizer


class AdaptiveUPGD(UtilityOptimizer):
    """UPGD, Adam form (Elsayed & Mahmood, "Addressing Loss of Plasticity and Catastrophic Forgetting in
    Continual Learning", ICLR 2024; the form the authors use with PPO).

    Per weight ``w`` with gradient ``g``, at its ``t``-th step, with decoupled weight decay λ:

        U ← β_u·U + (1 - β_u)·(-g ⊙ w),   Û = U / (1 - β_u^t)
        η = max of Û over every weight of every group,   ū = sigmoid(Û / η)   (ū = 0.5 if η ≤ 0 or ∞/NaN)
        m ← β1·m + (1-β1)·g,   v ← β2·v + (1-β2)·g²,   m̂ = m/(1-β1^t),   v̂ = v/(1-β2^t)
        ξ ~ N(0, σ²)
        protect=True:   w ← (1 - lr·λ)·w - lr·[m̂ ⊙ (1 - ū) / (√v̂ + ε) + ξ ⊙ (1 - ū)]
        protect=False:  w ← (1 - lr·λ)·w - lr·[m̂ / (√v̂ + ε) + ξ ⊙ (1 - ū)]

    The noise is not divided by √v̂. With σ = 0 and ū ≡ 0 it is AdamW (Adam when λ = 0). No factor 2 on
    the step: the authors' PPO setting (their lr 3e-4, doubled in their code) is lr = 6e-4 here.

    State per parameter ``p`` (``optimizer.state[p]``): ``step`` (0-d float64 CPU tensor, steps taken on
    ``p``; shaped like ``p`` with ``per_element_steps``, which bias-corrects U, m and v of every weight by
    its own count t), ``utility_trace`` (U), ``exp_avg`` (m) and ``exp_avg_sq`` (v), shaped like ``p``.

    Noise: pass ``generator`` (a ``torch.Generator``, used and advanced as given; on the parameters'
    device, else every draw is copied over) or ``seed``; with neither, the noise is seeded from torch's
    global generator. Same seed, same noise. ``state_dict()`` saves the generator's state.
    """

    state_tensor_keys = ("utility_trace", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        beta_utility: float = 0.999,
        sigma: float = 1e-3,
        protect: bool = True,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        per_element_steps: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            beta_utility=beta_utility,
            sigma=sigma,
            protect=bool(protect),
            per_element_steps=per_element_steps,
        )
        super().__init__(params, defaults, generator, seed)

    @staticmethod
    def _check_hyperparameters(values: dict[str, Any]) -> None:
        UtilityOptimizer._check_hyperparameters(values)
        check_adam_hyperparameters(values)

    def _update(self, bucket: Bucket, gates: list[Tensor] | None, noise: list[Tensor] | None) -> None:
        group, step, params, grads = bucket.group, bucket.step, bucket.params, bucket.grads
        (beta1, beta2), lr = group["betas"], group["lr"]
        exp_avg, exp_avg_sq = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        update_moments(exp_avg, exp_avg_sq, grads, beta1, beta2)
        if step is None:  # per-element step counts: m̂/(√v̂ + ε) with both corrections per element
            exp_avg, denominator = elementwise_corrected_moments(
                exp_avg, exp_avg_sq, bucket.state_list("step"), group
            )
            factor = 1.0
        else:  # m̂/(√v̂ + ε) = f · m/(√v + ε·√(1-β2^t)) with f = √(1-β2^t)/(1-β1^t): corrections in scalars
            root_correction2 = math.sqrt(1.0 - beta2**step)
            factor = root_correction2 / (1.0 - beta1**step)
            denominator = torch._foreach_sqrt(exp_avg_sq)
            add_scalar_(denominator, group["eps"] * root_correction2)
        if group["protect"]:
            assert gates is not None
            if noise is not None:  # w -= lr·(f·m/d + ξ) ⊙ (1 - ū)
                torch._foreach_addcdiv_(noise, exp_avg, denominator, value=factor)
                torch._foreach_addcmul_(params, noise, gates, value=-lr)
            else:  # w -= lr·f·(m ⊙ (1 - ū))/d
                torch._foreach_mul_(gates, exp_avg)
                torch._foreach_addcdiv_(params, gates, denominator, value=-lr * factor)
        else:  # w -= lr·(f·m/d + ξ ⊙ (1 - ū))
            torch._foreach_addcdiv_(params, exp_avg, denominator, value=-lr * factor)
            if noise is not None:
                assert gates is not None
                torch._foreach_addcmul_(params, noise, gates, value=-lr)
