"""TRAC: the parameter-free scale tuner of Muppidi, Zhang & Yang, "Fast TRAC: A Parameter-Free Optimizer for
Lifelong Reinforcement Learning" (NeurIPS 2024), around Adam."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from nested_ac.optim.common import ParamsT, check_range
from nested_ac.optim.elementwise_adam import ElementwiseAdam

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
    1e-8. The clip of S at 0 is the authors' released code's (``max(s, 0)``); the paper's Algorithm 1
    writes the plain sum, which a first h_t > 0 would make negative — a reflection of Adam's displacement
    through θ_ref. erfi is worked out in float64 on the host (one read-back of h_t per step).

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

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One TRAC step for every parameter with a gradient; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        for p in params:
            state = self.state[p]
            if "reference" not in state:
                state["reference"] = p.detach().clone()
                state["displacement"] = torch.zeros_like(p)
        references = [self.state[p]["reference"] for p in params]
        displacements = [self.state[p]["displacement"] for p in params]
        self._follow_outside_changes(params, references, displacements)
        h = float(
            sum(map(torch.vdot, [p.grad.flatten() for p in params], [d.flatten() for d in displacements]))
        )
        torch._foreach_copy_(params, torch._foreach_add(references, displacements))  # θ_t^base
        super().step()  # θ_{t+1}^base
        torch._foreach_copy_(displacements, torch._foreach_sub(params, references))
        self.scale = self._tune(h)
        torch._foreach_copy_(params, torch._foreach_add(references, displacements, alpha=self.scale))
        return loss

    def _follow_outside_changes(
        self, params: list[Tensor], references: list[Tensor], displacements: list[Tensor]
    ) -> None:
        """θ_ref ← θ − S·(θ^base − θ_ref) wherever θ is not θ_ref + S·(θ^base − θ_ref), the value the last
        step wrote (worked out by the same kernel, so untouched entries compare equal bit for bit)."""
        written = torch._foreach_add(references, displacements, alpha=self.scale)
        anchored = torch._foreach_add(params, displacements, alpha=-self.scale)
        for p, reference, value, anchor in zip(params, references, written, anchored, strict=True):
            reference.copy_(torch.where(p == value, reference, anchor))

    def _tune(self, h: float) -> float:
        """Every tuner's step on h_t; returns S_{t+1} = max(0, Σ_j s_j)."""
        total = 0.0
        for j, beta in enumerate(self.tuner_betas):
            self.variance[j] = beta * beta * self.variance[j] + h * h
            self.sigma[j] = beta * self.sigma[j] - h
            ratio = self.sigma[j] / (math.sqrt(2.0 * self.variance[j]) + self.tuner_eps)
            total += self.s_prior / erfi(1.0 / math.sqrt(2.0)) * erfi(ratio)
        return max(total, 0.0)
