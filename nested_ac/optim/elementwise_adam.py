"""ElementwiseAdam: Adam(W) with one step count per weight, for tools that restart single weights (continual
backprop, ReDo)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from nested_ac.optim.common import ParamsT, WithoutDynamoImport, check_adam_hyperparameters, foreach_scalar
from nested_ac.optim.flat import flatten_state, work_buffer


class _CorrectionTable:
    """Adam's bias corrections ``-(1 - β1^t)`` and ``√(1 - β2^t)`` for t = 0, 1, 2, … (worked out in float64,
    kept in the parameters' dtype and device), looked up by step count: a step costs two lookups instead of
    two powers per weight. The table grows by whole chunks, each worked out alike, so an entry has the same
    bits however large the table has grown (a resumed run looks up what the uninterrupted run did)."""

    CHUNK = 4096

    def __init__(self, betas: tuple[float, float], like: Tensor) -> None:
        self.betas, self.like = betas, like
        self.minus_correction1, self.root_correction2 = like.new_empty(0), like.new_empty(0)

    def covering(self, max_step: int) -> tuple[Tensor, Tensor]:
        """The two tables, with entries for every step count up to ``max_step``."""
        while len(self.minus_correction1) <= max_step:
            start = len(self.minus_correction1)
            t = torch.arange(start, start + self.CHUNK, dtype=torch.float64)
            beta1, beta2 = self.betas
            minus_correction1 = torch.pow(beta1, t).sub_(1.0).to(self.like)
            root_correction2 = torch.pow(beta2, t).neg_().add_(1.0).sqrt_().to(self.like)
            self.minus_correction1 = torch.cat([self.minus_correction1, minus_correction1])
            self.root_correction2 = torch.cat([self.root_correction2, root_correction2])
        return self.minus_correction1, self.root_correction2


class _FlatAdamState:
    """One flat tensor each for ``step``, ``exp_avg`` and ``exp_avg_sq`` of some parameters (one device and
    dtype), whose per-parameter state tensors are views into them: a step does its arithmetic on three
    tensors, and a tool that zeroes entries through ``optimizer.state[p][key]`` zeroes them here. ``grad``
    and ``update`` are flat work buffers, with ``grads`` and ``updates`` their views shaped like the
    parameters; ``index``, ``correction1`` and ``denominator`` work buffers; ``max_step`` a bound on every
    step count (tools only lower them)."""

    __slots__ = (
        "params", "views", "step", "exp_avg", "exp_avg_sq", "grad", "grads", "update", "updates",
        "index", "correction1", "denominator", "max_step",
    )  # fmt: skip

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]]) -> None:
        self.params = params
        for key in ElementwiseAdam.per_parameter_state_keys:
            setattr(self, key, flatten_state(params, states, key))
        self.views = [state[key] for state in states for key in ElementwiseAdam.per_parameter_state_keys]
        self.grad, self.grads = work_buffer(params)
        self.update, self.updates = work_buffer(params)
        self.index = torch.empty_like(self.step, dtype=torch.long)
        self.correction1, self.denominator = torch.empty_like(self.step), torch.empty_like(self.step)
        self.max_step = int(self.step.max()) if len(self.step) else 0

    def holds(self, states: list[dict[str, Any]]) -> bool:
        """True while every state tensor of these parameters is still the view this layout made."""
        current = [state.get(key) for state in states for key in ElementwiseAdam.per_parameter_state_keys]
        return all(map(operator.is_, current, self.views))


class ElementwiseAdam(WithoutDynamoImport, Optimizer):
    """Adam (Kingma & Ba, ICLR 2015) with decoupled weight decay (AdamW, Loshchilov & Hutter, ICLR 2019)
    and one step count per weight, the optimizer continual backprop needs (Dohare et al., "Loss of
    plasticity in deep continual learning", Nature 2024).

    Per weight ``w`` with gradient ``g`` and its own step count ``t``:

        g ← g + λ₂·w   (coupled L2, ``l2``: torch Adam's ``weight_decay``)
        t ← t + 1,   m ← β1·m + (1-β1)·g,   v ← β2·v + (1-β2)·g²
        m̂ = m/(1-β1^t),   v̂ = v/(1-β2^t),   w ← (1 - lr·λ)·w - lr·m̂/(√v̂ + ε)   (λ: ``weight_decay``)

    torch's Adam keeps one ``t`` per tensor, so a weight whose state a plasticity tool zeroes at a late
    step keeps that step's bias correction: its first update is ≈ lr·(1-β1)/√(1-β2) instead of a fresh
    Adam's ≈ lr. Here ``step`` is a state tensor shaped like the weight, listed in
    ``per_parameter_state_keys`` with the moments, so zeroing a weight's entries restarts it exactly. While
    no entry is reset it equals ``torch.optim.AdamW`` (``torch.optim.Adam`` when λ = 0; torch's Adam with
    ``weight_decay=λ₂`` when λ = 0 and λ₂ > 0) up to rounding.
    Step counts are kept in the parameter's dtype (exact up to 2^24 steps in float32).

    Layout: the state tensors of the parameters of a group that share a device and dtype are views into
    one flat tensor per key, so a step costs a handful of operations on three tensors whatever the number
    of parameters; state replaced from outside (``load_state_dict``, assignment) is re-flattened, values
    kept, at the next step. The bias corrections are looked up by step count in a table worked out once
    in float64.
    """

    per_parameter_state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, l2=l2)
        check_adam_hyperparameters(defaults)
        super().__init__(params, defaults)
        self._flat: dict[tuple[int, ...], _FlatAdamState] = {}  # by the ids of the parameters it holds
        self._corrections: dict[tuple[Any, ...], _CorrectionTable] = {}  # by betas, dtype and device

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Torch's ``add_param_group``, with the group's own hyperparameters checked like the defaults."""
        super().add_param_group(param_group)
        try:
            check_adam_hyperparameters(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Torch's ``load_state_dict``; the step counts follow their parameter's device and dtype, and the
        state is flattened again (values kept) for the next step."""
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            state["step"] = state["step"].to(device=p.device, dtype=p.dtype)
        self._flat = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._flat, self._corrections = {}, {}

    def _flat_state(self, params: list[Tensor]) -> _FlatAdamState:
        """The flat state of ``params`` (one device and dtype), laid out anew if it is missing or stale."""
        states = [self.state[p] for p in params]
        key = tuple(map(id, params))
        flat = self._flat.get(key)
        if flat is None or not flat.holds(states):
            flat = self._flat[key] = _FlatAdamState(params, states)
        return flat

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step for every parameter with a gradient; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("ElementwiseAdam does not support sparse gradients")
                    by_kind.setdefault((p.device, p.dtype), []).append(p)
            for params in by_kind.values():
                self._step(group, self._flat_state(params))
        return loss

    def _step(self, group: dict[str, Any], flat: _FlatAdamState) -> None:
        """The step of the parameters of ``flat``, on the flat tensors."""
        params, (beta1, beta2) = flat.params, group["betas"]
        torch._foreach_copy_(flat.grads, [p.grad for p in params])
        if group["l2"]:  # coupled: g ← g + λ₂·w, through the moments
            torch._foreach_add_(flat.grads, params, alpha=group["l2"])
        grad = flat.grad
        flat.step.add_(1.0)
        flat.max_step += 1
        flat.exp_avg.lerp_(grad, 1.0 - beta1)
        flat.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        table = self._corrections.get((beta1, beta2, grad.dtype, grad.device))
        if table is None:
            table = self._corrections[(beta1, beta2, grad.dtype, grad.device)] = _CorrectionTable(
                (beta1, beta2), grad
            )
        minus_correction1, root_correction2 = table.covering(flat.max_step)
        flat.index.copy_(flat.step)
        torch.index_select(minus_correction1, 0, flat.index, out=flat.correction1)  # -(1 - β1^t)
        torch.index_select(root_correction2, 0, flat.index, out=flat.denominator)  # √(1 - β2^t)
        torch.sqrt(flat.exp_avg_sq, out=flat.update).div_(flat.denominator)
        denominator = torch.add(flat.update, group["eps"], out=flat.denominator)  # √v̂ + ε
        # -lr·m̂/(√v̂ + ε) = lr·m/(-(1 - β1^t))/(√v̂ + ε)
        torch.div(flat.exp_avg, flat.correction1, out=flat.update).div_(denominator).mul_(group["lr"])
        if group["weight_decay"]:  # decoupled: w ← (1 - lr·λ)·w
            decay = 1.0 - group["lr"] * group["weight_decay"]
            torch._foreach_mul_(params, foreach_scalar(decay, params[0]))
        torch._foreach_add_(params, flat.updates)
