"""UPGD, SGD form (Elsayed & Mahmood, ICLR 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from nested_ac.optim.common import ParamsT
from nested_ac.optim.utility import Bucket, UtilityOptimizer


class UPGD(UtilityOptimizer):
    """UPGD, SGD form (Elsayed & Mahmood, "Addressing Loss of Plasticity and Catastrophic Forgetting in
    Continual Learning", ICLR 2024): perturb useless weights, protect useful ones.

    Per weight ``w`` with gradient ``g``, at its ``t``-th step, with decoupled weight decay λ:

        U ← β_u·U + (1 - β_u)·(-g ⊙ w),   Û = U / (1 - β_u^t)
        η = max of Û over every weight of every group,   ū = sigmoid(Û / η)   (ū = 0.5 if η ≤ 0 or ∞/NaN)
        ξ ~ N(0, σ²)
        protect=True  (the paper's UPGD):  w ← (1 - lr·λ)·w - lr·(g + ξ) ⊙ (1 - ū)
        protect=False (noise gated only):  w ← (1 - lr·λ)·w - lr·(g + ξ ⊙ (1 - ū))

    With σ = 0 and ū ≡ 0 it is SGD with decoupled weight decay. No factor 2 on the step.

    State per parameter ``p`` (``optimizer.state[p]``): ``step`` (0-d float64 CPU tensor, steps taken on
    ``p``; shaped like ``p`` with ``per_element_steps``, see :class:`UtilityOptimizer`) and
    ``utility_trace`` (U, shaped like ``p``).

    Noise: pass ``generator`` (a ``torch.Generator``, used and advanced as given; on the parameters'
    device, else every draw is copied over) or ``seed``; with neither, the noise is seeded from torch's
    global generator. Same seed, same noise. ``state_dict()`` saves the generator's state.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
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
            weight_decay=weight_decay,
            beta_utility=beta_utility,
            sigma=sigma,
            protect=bool(protect),
            per_element_steps=per_element_steps,
        )
        super().__init__(params, defaults, generator, seed)

    def _update(self, bucket: Bucket, gates: list[Tensor] | None, noise: list[Tensor] | None) -> None:
        lr, params, grads = bucket.group["lr"], bucket.params, bucket.grads
        if bucket.group["protect"]:
            assert gates is not None
            if noise is not None:  # w -= lr·(g + ξ) ⊙ (1 - ū)
                torch._foreach_add_(noise, grads)
                torch._foreach_addcmul_(params, noise, gates, value=-lr)
            else:
                torch._foreach_addcmul_(params, grads, gates, value=-lr)
        else:  # w -= lr·(g + ξ ⊙ (1 - ū))
            torch._foreach_add_(params, grads, alpha=-lr)
            if noise is not None:
                assert gates is not None
                torch._foreach_addcmul_(params, noise, gates, value=-lr)
