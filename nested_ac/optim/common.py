"""What nested-ac's optimizers share: the mixin that keeps torch's compiler unimported, the range checks of
their hyperparameters, and the ``torch._foreach_*`` helpers of Adam's moments and bias corrections."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def _without_dynamo_import(name: str) -> Callable[..., Any]:
    """``torch.optim.Optimizer``'s method ``name`` (one torch marks with ``torch._disable_dynamo``), run
    unmarked while ``torch._dynamo`` has not been imported, torch's marked method once it has."""
    marked = getattr(Optimizer, name)
    unmarked = getattr(marked, "__wrapped__", marked)

    @functools.wraps(unmarked)
    def method(*args: Any, **kwargs: Any) -> Any:
        return (marked if "torch._dynamo" in sys.modules else unmarked)(*args, **kwargs)

    return method


class WithoutDynamoImport:
    """Mixin for a torch optimizer: ``add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict``
    without the import of ``torch._dynamo`` (torch's compiler) that their first call costs.

    torch marks these methods as never to be compiled, and the mark imports ``torch._dynamo`` on its first
    call only to apply itself: measured here ≈ 0.8 s at import and ≈ 0.3 s at exit, a sixth of a 300k-step
    training process that never compiles. While ``torch._dynamo`` has not been imported nothing can be
    compiling, so the methods run unmarked — the same code; once anything has imported it, torch's marked
    methods run.
    """

    add_param_group = _without_dynamo_import("add_param_group")
    zero_grad = _without_dynamo_import("zero_grad")
    state_dict = _without_dynamo_import("state_dict")
    load_state_dict = _without_dynamo_import("load_state_dict")


def check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    """ValueError unless ``low <= value`` (and ``value < high`` when ``high`` is given)."""
    inside = value >= low and (high is None or value < high)
    if not inside or math.isnan(value):
        interval = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def foreach_scalar(value: float, like: Tensor) -> float | Tensor:
    """``value`` in the form the fastest ``torch._foreach_*`` kernel for tensors like ``like`` takes.

    On the CPU a foreach op with a Python scalar wraps it into a fresh tensor for every list element; a 0-d
    tensor of the same dtype is several times cheaper. CUDA's fused kernels take Python scalars directly.
    """
    return torch.full((), value, dtype=like.dtype) if like.device.type == "cpu" else value


def add_scalar_(tensors: list[Tensor], value: float) -> None:
    """``tensors[i] += value`` in place (on the CPU through a broadcast 0-d tensor: no per-element wrap)."""
    if tensors[0].device.type == "cpu":
        torch._foreach_add_(tensors, [torch.full((), value, dtype=tensors[0].dtype)] * len(tensors))
    else:
        torch._foreach_add_(tensors, value)


def one_minus_power(beta: float, steps: list[Tensor]) -> list[Tensor]:
    """``1 - β^t`` for every element ``t`` of the step-count tensors ``steps``, as new tensors."""
    corrections = torch._foreach_pow(beta, steps)
    torch._foreach_neg_(corrections)
    add_scalar_(corrections, 1.0)
    return corrections


def update_moments(
    exp_avg: list[Tensor], exp_avg_sq: list[Tensor], grads: list[Tensor], beta1: float, beta2: float
) -> None:
    """Adam's moments in place: ``m ← β1·m + (1-β1)·g``, ``v ← β2·v + (1-β2)·g²``."""
    torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sq, foreach_scalar(beta2, exp_avg_sq[0]))
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)


def elementwise_corrected_moments(
    exp_avg: list[Tensor], exp_avg_sq: list[Tensor], steps: list[Tensor], group: dict[str, Any]
) -> tuple[list[Tensor], list[Tensor]]:
    """``m̂ = m/(1-β1^t)`` and ``√v̂ + ε = √v/√(1-β2^t) + ε`` with a step count ``t`` per element (new
    tensors): Adam's bias correction for weights that started (or restarted) at different steps."""
    beta1, beta2 = group["betas"]
    corrected = torch._foreach_div(exp_avg, one_minus_power(beta1, steps))
    root_correction2 = one_minus_power(beta2, steps)
    torch._foreach_sqrt_(root_correction2)
    denominator = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denominator, root_correction2)
    add_scalar_(denominator, group["eps"])
    return corrected, denominator


def check_adam_hyperparameters(values: dict[str, Any]) -> None:
    """ValueError naming the first Adam setting of ``values`` (lr, betas, eps, weight_decay, l2) out of
    range."""
    check_range("lr", values["lr"], 0.0)
    check_range("weight_decay", values["weight_decay"], 0.0)
    check_range("l2", values.get("l2", 0.0), 0.0)
    betas = values["betas"]
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        check_range(f"betas[{index}]", beta, 0.0, 1.0)
    check_range("eps", values["eps"], 0.0)
