"""FlatAdam: torch's Adam stepped on flat tensors, the fast PPO engine's optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from nested_ac.optim.common import ParamsT, WithoutDynamoImport
from nested_ac.optim.flat import FlatState, work_buffer


class FlatAdam(WithoutDynamoImport, torch.optim.Adam):
    """``torch.optim.Adam`` (Kingma & Ba, ICLR 2015) — the same update, state and checkpoints — stepped on
    one flat tensor per state key instead of one tensor per parameter. With ``t`` the group's step count:

        m ← β1·m + (1-β1)·g,   v ← β2·v + (1-β2)·g²,   w ← w - lr/(1-β1^t) · m/(√v/√(1-β2^t) + ε)

    For a network of a dozen small tensors, torch's per-tensor work (even its fused kernel's) costs several
    times the arithmetic; here a step is a handful of operations on flat tensors. Each parameter's
    ``exp_avg``, ``exp_avg_sq`` and ``step`` are views into them (so tools and ``state_dict`` see torch's
    layout); state replaced from outside (``load_state_dict``) is re-flattened, values kept, at the next
    step. A group without any gradient is skipped, as torch skips it; where this layout does not cover a
    group (weight decay, amsgrad, maximize, differentiable or capturable, sparse gradients or only some
    missing, mixed devices or dtypes, unequal step counts), the step is torch's own.
    """

    per_parameter_state_keys = ("exp_avg", "exp_avg_sq")  # torch Adam's; zeroing entries zeroes flat state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._flat: dict[int, _FlatAdamGroup] = {}

    def __init__(self, params: ParamsT, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._flat = {}  # by group index

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        stepped = [
            (group, self._flat_group(index, group))
            for index, group in enumerate(self.param_groups)
            if any(p.grad is not None for p in group["params"])  # torch steps no parameter without one
        ]
        if closure is not None or any(flat is None for _, flat in stepped):
            return super().step(closure)
        for group, flat in stepped:
            beta1, beta2 = group["betas"]
            exp_avg, exp_avg_sq = flat.tensors["exp_avg"], flat.tensors["exp_avg_sq"]
            flat.count_step()
            exp_avg.lerp_(flat.grad, 1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(flat.grad, flat.grad, value=1.0 - beta2)
            correction1, root_correction2 = 1.0 - beta1**flat.count, math.sqrt(1.0 - beta2**flat.count)
            denominator = torch.sqrt(exp_avg_sq, out=flat.update).div_(root_correction2).add_(group["eps"])
            torch.div(exp_avg, denominator, out=flat.update).mul_(-group["lr"] / correction1)
            torch._foreach_add_(flat.params, flat.updates)
        return None

    def _flat_group(self, index: int, group: dict[str, Any]) -> _FlatAdamGroup | None:
        """The flat layout of group ``index``, made anew if missing or stale; None where it does not apply."""
        params = group["params"]
        states = [self.state[p] for p in params]
        flat = self._flat.get(index)
        if flat is not None and flat.holds(params, states):
            return flat
        self._flat.pop(index, None)
        if group["weight_decay"] or any(
            group[key] for key in ("amsgrad", "maximize", "differentiable", "capturable")
        ):
            return None
        count = FlatState.shared_step(params, states)
        if count is None:
            return None
        self._flat[index] = flat = _FlatAdamGroup(params, states, count)
        return flat


class _FlatAdamGroup(FlatState):
    """A :class:`FlatAdam` group's state as a :class:`FlatState` (``exp_avg``, ``exp_avg_sq``, and a float32
    ``step``), with a second flat work buffer ``update`` (``updates``: its views shaped like the
    parameters)."""

    __slots__ = ("update", "updates")

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]], count: int) -> None:
        super().__init__(params, states, ("exp_avg", "exp_avg_sq"), count, torch.float32)
        self.update, self.updates = work_buffer(params)
