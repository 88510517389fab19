"""TRAC: the parameter-free scale tuner of Muppidi, Zhang & Yang, "Fast TRAC: A Parameter-Free Optimizer for
Lifelong Reinforcement Learning" (NeurIPS 2024), around Adam."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from nested_ac.optim.common import ParamsT, check_range
from nested_ac.optim.elementwise_adam import ElementwiseAdam
from nested_ac.optim.flat import flatten_state, work_buffer

# The paper's discount factors of the tuners (one tuner each; their scales are summed).
TUNER_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)


def erfi(x: float) -> float:
    """The imaginary error function erfi(x) = -i·erf(ix) = (2/√π) Σ_{n≥0} x^(2n+1) / (n!·(2n+1)), in float64.

    Every term of the series has the sign of ``x``, so its partial sums carry no cancellation: accurate to
    rounding for every ``x``, ±inf where the value passes float64's range (|x| ≳ 26.6)."""
    square, term, total, n = x * x, x, x, 0
    while abs(term) > 1e-17 * abs(total):
        n += 1
        term *= square / n
        total += term / (2 * n + 1)
    return 2.0 / math.sqrt(math.pi) * total


ERFI_OF_ROOT_HALF = erfi(1.0 / math.sqrt(2.0))  # s_j = s_prior at σ_j² = v_j


class TRAC(ElementwiseAdam):
    """TRAC (Muppidi, Zhang & Yang, NeurIPS 2024): Adam's iterate θ^base, rescaled around the reference
    point θ_ref (the initial parameters) by a scale S_t that a sum of discounted one-dimensional tuners
    learns, with no hyperparameter to tune.

    With g_t the gradient at θ_t, at each step (the paper's Algorithm 1 with its 1D tuner):

        h_t = ⟨g_t, θ_t^base − θ_ref⟩                      (over every parameter with a gradient)
        θ_{t+1}^base = Adam(θ_t^base, g_t)
        for each discount β_j:  v_j ← β_j²·v_j + h_t²,   σ_j ← β_j·σ_j − h_t,
                                s_j = s_prior / erfi(1/√2) · erfi(σ_j / (√(2·v_j) + ε))
        S_{t+1} = max(0, Σ_j s_j)
        θ_{t+1} = θ_ref + S_{t+1}·(θ_{t+1}^base − θ_ref)

    from v_j = σ_j = 0, S_1 = 0 and θ_1^base = θ_ref = θ_1; β_j = 0.9, 0.99, …, 0.999999, s_prior = ε =
    1e-8. The clip of S at 0 follows the authors' released code (``max(s, 0)``, as a public port of it
    has it); without it a first h_t > 0 would make S negative — Adam's displacement reflected through
    θ_ref. θ^base is kept as the displacement θ^base − θ_ref itself (the paper's iterate; the released code
    recovers it as (θ − θ_ref)/(S + ε)). erfi is worked out in float64 on the host (one read-back of h_t
    per step); a scale past the parameters' dtype makes them ±inf or NaN, which the run's fault check
    reports (S grows without bound only while h_t keeps one sign for hundreds of steps).

    Adam is :class:`~nested_ac.optim.ElementwiseAdam` (torch's Adam(W) up to rounding while no entry is
    restarted, one step count per weight), stepping its own iterate θ^base: decoupled weight decay and
    coupled L2 act on θ^base, as they would without TRAC. Its state per parameter is Adam's (``step``,
    ``exp_avg``, ``exp_avg_sq``), ``reference`` (θ_ref) and ``displacement`` (θ^base − θ_ref); TRAC's own
    (the tuners' v_j and σ_j, the scale S) is ``state_dict()["trac"]``; all of it resumes bit for bit.

    Parameters changed from outside between two steps (a tool's reset, shrink-and-perturb, a transfer to a
    bias) keep their new values: where θ ≠ θ_ref + S·(θ^base − θ_ref) at the next step, the reference moves
    to θ − S·(θ^base − θ_ref), the displacement staying as it is. A tool that restarts entries' optimizer
    state (continual backprop, ReDo) zeroes ``displacement`` with Adam's state (it is one of
    ``per_parameter_state_keys``): those entries then restart as at TRAC's start — θ_ref their fresh value,
    no displacement, a fresh Adam step count — while the tuners, which are shared by every weight, go on.

    Layout: ``reference`` and ``displacement`` of the parameters that share a device and dtype are views
    into one flat tensor each (as Adam's state is, :class:`~nested_ac.optim.ElementwiseAdam`), so TRAC's
    own work is a dozen operations on flat tensors per step.
    """

    per_parameter_state_keys = (*ElementwiseAdam.per_parameter_state_keys, "displacement")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        l2: float = 0.0,
        tuner_betas: Sequence[float] = TUNER_BETAS,
        s_prior: float = 1e-8,
        tuner_eps: float = 1e-8,
    ) -> None:
        if not tuner_betas:
            raise ValueError("tuner_betas must hold at least one discount factor")
        for index, beta in enumerate(tuner_betas):
            check_range(f"tuner_betas[{index}]", beta, 0.0)
            if beta > 1.0:
                raise ValueError(f"tuner_betas[{index}] must be in [0.0, 1.0], got {beta}")
        if not s_prior > 0.0:
            raise ValueError(f"s_prior must be > 0, got {s_prior}")
        if not tuner_eps > 0.0:
            raise ValueError(f"tuner_eps must be > 0, got {tuner_eps}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l2=l2)
        self.tuner_betas, self.s_prior, self.tuner_eps = tuple(map(float, tuner_betas)), s_prior, tuner_eps
        self.variance = [0.0] * len(self.tuner_betas)  # v_j
        self.sigma = [0.0] * len(self.tuner_betas)  # σ_j
        self.scale = 0.0  # S_t, the scale of the parameters as they are now
        self._layouts: dict[tuple[int, ...], _TracLayout] = {}  # by the ids of the parameters they hold

    def state_dict(self) -> dict[str, Any]:
        """Torch's optimizer state dict (Adam's state, ``reference`` and ``displacement`` per parameter) plus
        ``trac``: the tuners' ``variance`` (v_j) and ``sigma`` (σ_j) and the ``scale`` S."""
        state = super().state_dict()
        state["trac"] = {"variance": list(self.variance), "sigma": list(self.sigma), "scale": self.scale}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        trac = state_dict.pop("trac")
        if len(trac["variance"]) != len(self.tuner_betas):
            raise ValueError(
                f"the state holds {len(trac['variance'])} tuners, this TRAC has {len(self.tuner_betas)}"
            )
        super().load_state_dict(state_dict)
        self.variance, self.sigma, self.scale = list(trac["variance"]), list(trac["sigma"]), trac["scale"]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._layouts = {}

    def _layout(self, params: list[Tensor]) -> _TracLayout:
        """The flat layout of ``reference`` and ``displacement`` of ``params`` (one device and dtype), laid
        out anew where missing or stale (state loaded or replaced from outside); a parameter without them
        yet starts at θ_ref = θ, no displacement."""
        states = [self.state[p] for p in params]
        key = tuple(map(id, params))
        layout = self._layouts.get(key)
        if layout is None or not layout.holds(states):
            for p, state in zip(params, states, strict=True):
                state.setdefault("reference", p.detach().clone())
            layout = self._layouts[key] = _TracLayout(params, states)
        return layout

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One TRAC step for every parameter with a gradient; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    by_kind.setdefault((p.device, p.dtype), []).append(p)
        if not by_kind:
            return loss
        layouts = [self._layout(params) for params in by_kind.values()]
        h = 0.0
        for layout in layouts:  # h_t, and θ_t^base in the parameters
            layout.follow_outside_changes(self.scale)
            h += float(torch.dot(layout.flat_grad(), layout.displacement))
            layout.write_base()
        super().step()  # θ_{t+1}^base
        for layout in layouts:
            torch.sub(layout.flat_params(), layout.reference, out=layout.displacement)
        self.scale = self._tune(h)
        for layout in layouts:
            layout.write_scaled(self.scale)
        return loss

    def _tune(self, h: float) -> float:
        """Every tuner's step on h_t; returns S_{t+1} = max(0, Σ_j s_j)."""
        total = 0.0
        for j, beta in enumerate(self.tuner_betas):
            self.variance[j] = beta * beta * self.variance[j] + h * h
            self.sigma[j] = beta * self.sigma[j] - h
            ratio = self.sigma[j] / (math.sqrt(2.0 * self.variance[j]) + self.tuner_eps)
            total += self.s_prior / ERFI_OF_ROOT_HALF * erfi(ratio)
        return max(total, 0.0)


class _TracLayout:
    """TRAC's ``reference`` and ``displacement`` of some parameters (one device and dtype) as views into one
    flat tensor each: a step does its arithmetic on flat tensors, and a tool that zeroes entries through
    ``optimizer.state[p]["displacement"]`` zeroes them here. ``theta``, ``grad`` and ``out`` are flat work
    buffers with their views shaped like the parameters (``theta_views`` …), copied from and to them."""

    __slots__ = (
        "params", "reference", "displacement", "views", "theta", "theta_views", "grad", "grad_views",
        "out", "out_views",
    )  # fmt: skip

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]]) -> None:
        self.params = params
        self.reference = flatten_state(params, states, "reference")
        self.displacement = flatten_state(params, states, "displacement")
        self.views = [state[key] for state in states for key in ("reference", "displacement")]
        self.theta, self.theta_views = work_buffer(params)
        self.grad, self.grad_views = work_buffer(params)
        self.out, self.out_views = work_buffer(params)

    def holds(self, states: list[dict[str, Any]]) -> bool:
        """True while every state's ``reference`` and ``displacement`` are still the views made here."""
        current = [state.get(key) for state in states for key in ("reference", "displacement")]
        return all(map(operator.is_, current, self.views))

    def flat_params(self) -> Tensor:
        """The parameters as they are now, in ``theta``."""
        torch._foreach_copy_(self.theta_views, self.params)
        return self.theta

    def flat_grad(self) -> Tensor:
        """The parameters' gradients, in ``grad``."""
        torch._foreach_copy_(self.grad_views, [p.grad for p in self.params])
        return self.grad

    def write_base(self) -> None:
        """The parameters ← θ^base = θ_ref + (θ^base − θ_ref)."""
        torch.add(self.reference, self.displacement, out=self.out)
        torch._foreach_copy_(self.params, self.out_views)

    def write_scaled(self, scale: float) -> None:
        """The parameters ← θ_ref + S·(θ^base − θ_ref)."""
        _plus_scaled(self.reference, self.displacement, scale, out=self.out)
        torch._foreach_copy_(self.params, self.out_views)

    def follow_outside_changes(self, scale: float) -> None:
        """θ_ref ← θ − S·(θ^base − θ_ref) wherever θ is not θ_ref + S·(θ^base − θ_ref), the value the last
        step wrote (worked out by the same kernels, so untouched entries compare equal bit for bit)."""
        theta = self.flat_params()
        written = _plus_scaled(self.reference, self.displacement, scale, out=self.out)
        changed = theta != written
        anchored = _plus_scaled(theta, self.displacement, -scale, out=self.out)
        torch.where(changed, anchored, self.reference, out=self.reference)


def _plus_scaled(base: Tensor, displacement: Tensor, scale: float, out: Tensor) -> Tensor:
    """``out`` ← ``base + scale·displacement``, with ``scale`` rounded to their dtype: ±inf where it passes
    the dtype's range (a scale grown without bound makes the parameters non-finite, and the run's fault
    check stops it naming one, instead of the cast failing)."""
    factor = torch.tensor(scale, dtype=torch.float64).to(device=base.device, dtype=base.dtype)
    return torch.mul(displacement, factor, out=out).add_(base)
