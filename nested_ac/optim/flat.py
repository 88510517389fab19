"""Flat state: an optimizer's per-parameter state tensors as views into one flat tensor per key, so that a
step does its arithmetic on one tensor instead of one per parameter (used by UPGD's common step,
ElementwiseAdam and FlatAdam)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def shaped_views(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of consecutive runs of ``flat``, shaped like each tensor of ``like`` in turn."""
    return [view.view_as(t) for t, view in zip(like, flat.split([t.numel() for t in like]), strict=True)]


def flatten_state(params: Sequence[Tensor], states: Sequence[dict[str, Any]], key: str) -> Tensor:
    """One flat tensor of every state's ``key`` (zeros where a state has none yet), each state's ``key``
    replaced by its view of it: the values kept, the storage shared."""
    flat = torch.cat(
        [state.get(key, torch.zeros_like(p)).reshape(-1) for p, state in zip(params, states, strict=True)]
    )
    for state, view in zip(states, shaped_views(flat, params), strict=True):
        state[key] = view
    return flat


def work_buffer(params: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """A flat buffer the size of ``params`` and its views shaped like them."""
    flat = params[0].new_empty(sum(p.numel() for p in params))
    return flat, shaped_views(flat, params)


class FlatState:
    """The state tensors ``keys`` of ``params`` as views into one flat tensor per key (``tensors``), and the
    step count ``count`` they all share, each parameter's ``step`` a 0-d view into ``steps`` (in
    ``step_dtype``: float32 as torch's Adam keeps it, float64 as UPGD does); ``grad`` a flat work buffer
    (``grads``: its views shaped like the parameters). The flat layout of :class:`FlatAdam`'s groups and of
    UPGD's common step: a step does its arithmetic on one tensor per key, and a tool that zeroes entries
    through ``optimizer.state[p][key]`` zeroes them here."""

    __slots__ = ("params", "keys", "tensors", "steps", "count", "views", "grad", "grads")

    def __init__(
        self,
        params: list[Tensor],
        states: list[dict[str, Any]],
        keys: Sequence[str],
        count: int,
        step_dtype: torch.dtype,
    ) -> None:
        self.params, self.keys, self.count = list(params), tuple(keys), count
        self.tensors = {key: flatten_state(params, states, key) for key in self.keys}
        self.steps = torch.full((len(params),), float(count), dtype=step_dtype)
        for state, step in zip(states, self.steps.unbind(), strict=True):
            state["step"] = step
        self.views = [state[key] for state in states for key in (*self.keys, "step")]
        self.grad, self.grads = work_buffer(params)

    @staticmethod
    def shared_step(params: list[Tensor], states: list[dict[str, Any]]) -> int | None:
        """The step count every one of ``params`` has taken (0 without state yet) if they can be laid out
        flat now — each with a dense gradient, all on one device in one dtype, one count — else None."""
        if (
            not params
            or any(p.grad is None or p.grad.is_sparse for p in params)
            or len({(p.device, p.dtype) for p in params}) > 1
        ):
            return None
        steps = {float(state["step"]) if "step" in state else 0.0 for state in states}
        return int(steps.pop()) if len(steps) == 1 else None

    def holds(self, params: list[Tensor], states: list[dict[str, Any]]) -> bool:
        """While ``params`` are the ones laid out here, each with a gradient, and their ``states`` still hold
        the views made here."""
        current = [state.get(key) for state in states for key in (*self.keys, "step")]
        return (
            len(params) == len(self.params)
            and all(map(operator.is_, params, self.params))
            and all(p.grad is not None for p in params)
            and all(map(operator.is_, current, self.views))
        )

    def count_step(self) -> None:
        """Copy the parameters' gradients into ``grad`` and count one step."""
        torch._foreach_copy_(self.grads, [p.grad for p in self.params])
        self.steps.add_(1.0)
        self.count += 1
