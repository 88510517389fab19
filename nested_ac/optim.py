"""UPGD: utility-based perturbed gradient descent (Elsayed & Mahmood, "Addressing Loss of Plasticity and
Catastrophic Forgetting in Continual Learning", ICLR 2024), in an SGD form and an Adam form.

Both optimizers keep, per weight, a trace of its first-order utility — how much the loss would rise if
the weight were set to zero — and scale every update by how *un*useful the weight is: useful weights are
protected, useless ones are perturbed with noise and so stay plastic. With ``g`` the gradient, ``w`` the
weight, ``t`` its step count and ``β_u`` the utility decay:

    u_t = -g ⊙ w                                   first-order utility
    U_t = β_u · U_{t-1} + (1 - β_u) · u_t           utility trace, U_0 = 0
    Û_t = U_t / (1 - β_u^t)                         bias-corrected
    η   = max of Û_t over every weight the optimizer holds (one scalar per step)
    ū   = sigmoid(Û_t / η)                          scaled utility in (0, 1); ū = 0.5 wherever η ≤ 0 or
                                                    is not finite (e.g. zero-initialised weights)
    ξ   ~ N(0, σ²), fresh each step

The step has no hidden factor 2 (the authors' reference code takes 2·lr: their PPO run with lr 3e-4
corresponds to lr 6e-4 here), and η is the maximum of the bias-corrected trace.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    """ValueError unless ``low <= value`` (and ``value < high`` when ``high`` is given)."""
    inside = value >= low and (high is None or value < high)
    if not inside or math.isnan(value):
        interval = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {interval}, got {value}")


class _UtilityOptimizer(Optimizer):
    """Shared machinery: utility traces, the global scale η, the gate ``1 - ū`` and the seeded noise.

    Per parameter ``p``, ``state[p]`` holds ``step`` (an int, steps taken on ``p``) and ``utility_trace``
    (U, shaped like ``p``), plus what a subclass adds; ``per_parameter_state_keys`` names the tensors
    shaped like the parameter, so plasticity tools can reset entries of them.
    """

    per_parameter_state_keys: tuple[str, ...] = ("utility_trace",)

    def __init__(self, params: Any, defaults: dict[str, Any], seed: int | None) -> None:
        _check_range("lr", defaults["lr"], 0.0)
        _check_range("weight_decay", defaults["weight_decay"], 0.0)
        _check_range("sigma", defaults["sigma"], 0.0)
        _check_range("beta_utility", defaults["beta_utility"], 0.0, 1.0)
        super().__init__(params, defaults)
        if seed is None:  # follow the global torch seed, so a seeded run is reproducible
            seed = int(torch.randint(0, 2**62, ()).item())
        self.noise_generator = torch.Generator().manual_seed(seed)

    # --- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["noise_generator"] = self.noise_generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        generator_state = state_dict.pop("noise_generator", None)
        super().load_state_dict(state_dict)
        if generator_state is not None:
            self.noise_generator.set_state(generator_state)

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = 0
            for key in self.per_parameter_state_keys:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    # --- utilities ---------------------------------------------------------------------------------
    def _traces(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
        """Every parameter with a utility trace, its trace and its bias correction ``1 - β_u^t``."""
        params, traces, corrections = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and state["step"] > 0:
                    params.append(p)
                    traces.append(state["utility_trace"])
                    corrections.append(1.0 - group["beta_utility"] ** state["step"])
        return params, traces, corrections

    def _global_scale(self) -> torch.Tensor:
        """``1/η`` as a 0-d tensor, or 0 where η ≤ 0 or is not finite (then every ū = 0.5). No sync."""
        _, traces, corrections = self._traces()
        if not traces:
            return torch.zeros(())
        maxima = torch.stack(torch._foreach_max(traces))
        eta = (maxima / torch.tensor(corrections, dtype=maxima.dtype, device=maxima.device)).max()
        valid = torch.isfinite(eta) & (eta > 0)
        return torch.where(valid, 1.0 / torch.where(valid, eta, 1.0), 0.0)

    def _gates(
        self, traces: list[torch.Tensor], correction: float, scale: torch.Tensor
    ) -> list[torch.Tensor]:
        """``1 - ū = sigmoid(-Û/η)`` for traces that share one bias correction ``1 - β_u^t``."""
        gates = torch._foreach_mul(traces, -scale / correction)
        torch._foreach_sigmoid_(gates)
        return gates

    def _noise(self, params: list[torch.Tensor], sigma: float) -> list[torch.Tensor]:
        """N(0, sigma²) noise shaped like each of ``params``, drawn in one call from the seeded generator."""
        flat = torch.randn(sum(p.numel() for p in params), generator=self.noise_generator).mul_(sigma)
        device, dtype = params[0].device, params[0].dtype
        flat = flat.to(device=device, dtype=dtype)
        return [
            chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in params]), params, strict=True)
        ]

    @torch.no_grad()
    def scaled_utilities(self) -> dict[torch.Tensor, torch.Tensor]:
        """ū for every parameter that has a utility trace, from the current state (for logging)."""
        scale = self._global_scale()
        params, traces, corrections = self._traces()
        return {
            p: torch.sigmoid(trace * (scale / correction))
            for p, trace, correction in zip(params, traces, corrections, strict=True)
        }

    # --- the step ----------------------------------------------------------------------------------
    def _buckets(self) -> Iterable[tuple[dict[str, Any], int, list[torch.Tensor]]]:
        """(group, step t, params) for the params with a gradient, grouped by their step count t."""
        for group in self.param_groups:
            by_step: dict[int, list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self._init_state(p)
                state["step"] += 1
                by_step[state["step"]].append(p)
            for step, params in by_step.items():
                yield group, step, params

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buckets = list(self._buckets())
        for group, _, params in buckets:  # U ← β_u·U + (1 - β_u)·(-g ⊙ w)
            traces = [self.state[p]["utility_trace"] for p in params]
            torch._foreach_mul_(traces, group["beta_utility"])
            torch._foreach_addcmul_(traces, [p.grad for p in params], params, value=group["beta_utility"] - 1)
        scale = self._global_scale()
        for group, step, params in buckets:
            traces = [self.state[p]["utility_trace"] for p in params]
            gates = self._gates(traces, 1.0 - group["beta_utility"] ** step, scale)
            direction, factor = self._direction(group, step, params)
            # The step is lr·factor·[direction + ξ/factor]: the noise is drawn already divided by factor.
            noise = self._noise(params, group["sigma"] / factor)
            if group["protect"]:  # (direction + ξ) ⊙ (1 - ū)
                torch._foreach_add_(direction, noise)
                torch._foreach_mul_(direction, gates)
            else:  # direction + ξ ⊙ (1 - ū)
                torch._foreach_mul_(noise, gates)
                torch._foreach_add_(direction, noise)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, direction, alpha=-group["lr"] * factor)
        return loss

    def _direction(
        self, group: dict[str, Any], step: int, params: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], float]:
        """``(d, c)`` with ``c·d`` the update direction before gating and noise (``d`` a new list)."""
        raise NotImplementedError


class UPGD(_UtilityOptimizer):
    """UPGD, SGD form (Elsayed & Mahmood, ICLR 2024): perturb useless weights, protect useful ones.

    With the utility machinery of this module (ū, ξ) and decoupled weight decay λ:

        protect=True  (the paper's UPGD):  w ← (1 - lr·λ)·w - lr·(g + ξ) ⊙ (1 - ū)
        protect=False (noise gated only):  w ← (1 - lr·λ)·w - lr·(g + ξ ⊙ (1 - ū))

    With σ = 0 and ū ≡ 0 it is SGD with decoupled weight decay. ``seed`` seeds the noise (None: drawn
    from torch's global generator); the noise generator's state is part of ``state_dict()``.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        beta_utility: float = 0.999,
        sigma: float = 1e-3,
        protect: bool = True,
        seed: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, weight_decay=weight_decay, beta_utility=beta_utility, sigma=sigma, protect=protect
        )
        super().__init__(params, defaults, seed)

    def _direction(
        self, group: dict[str, Any], step: int, params: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], float]:
        return torch._foreach_mul([p.grad for p in params], 1.0), 1.0


class AdaptiveUPGD(_UtilityOptimizer):
    """UPGD, Adam form (Elsayed & Mahmood, ICLR 2024; the form used with PPO).

    Adam's moments ``m ← β1·m + (1-β1)·g``, ``v ← β2·v + (1-β2)·g²``, ``m̂ = m/(1-β1^t)``,
    ``v̂ = v/(1-β2^t)``; then, with ū, ξ as in this module and decoupled weight decay λ:

        protect=True:   w ← (1 - lr·λ)·w - lr·[m̂ ⊙ (1 - ū) / (√v̂ + ε) + ξ ⊙ (1 - ū)]
        protect=False:  w ← (1 - lr·λ)·w - lr·[m̂ / (√v̂ + ε) + ξ ⊙ (1 - ū)]

    The noise is not divided by √v̂. With σ = 0 and ū ≡ 0 it is AdamW. State per parameter: ``step``,
    ``utility_trace``, ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """

    per_parameter_state_keys = ("utility_trace", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Any,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        beta_utility: float = 0.999,
        sigma: float = 1e-3,
        protect: bool = True,
        seed: int | None = None,
    ) -> None:
        for index, beta in enumerate(betas):
            _check_range(f"betas[{index}]", beta, 0.0, 1.0)
        _check_range("eps", eps, 0.0)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            beta_utility=beta_utility,
            sigma=sigma,
            protect=protect,
        )
        super().__init__(params, defaults, seed)

    def _direction(
        self, group: dict[str, Any], step: int, params: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], float]:
        # m̂/(√v̂ + ε) = [√(1-β2^t)/(1-β1^t)] · m/(√v + ε·√(1-β2^t)): both corrections in one factor.
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        exp_avg = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
        root_correction2 = math.sqrt(1.0 - beta2**step)
        denominator = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denominator, group["eps"] * root_correction2)
        return torch._foreach_div(exp_avg, denominator), root_correction2 / (1.0 - beta1**step)
