"""Numerical faults: a NaN or inf in a loss, gradient, parameter or the environment's output stops the run.

The checks are cheap enough to be always on:

- :func:`check_gradients`, before every optimizer step: the gradient norm that clipping computes (one
  scalar read); a non-finite gradient stops the update *before* it reaches the parameters, naming the
  minibatch's non-finite loss term if there is one, else the first non-finite gradient;
- :func:`check_losses`, after every update: the mean of each loss term (a non-finite term whose
  gradient was finite);
- :func:`check_update`, after every update: one fused norm over all parameters;
- :class:`EnvFaultCheck`, a callback: every environment step's observations and rewards.

Every check runs before the next checkpoint, so a checkpoint never holds a poisoned state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback


class NumericalFault(RuntimeError):
    """A NaN or inf appeared; ``where`` names it (a loss, a gradient, a parameter, an env output)."""

    def __init__(self, where: str, step: int) -> None:
        super().__init__(f"non-finite value (NaN or inf) in {where} at step {step:,}")
        self.where = where
        self.step = step
        self.last_checkpoint: Path | None = None  # set by the trainer: the run's last good checkpoint


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return not tensors or bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all())


def _first_non_finite(named: dict[str, torch.Tensor]) -> str:
    return next(name for name, tensor in named.items() if not torch.isfinite(tensor).all())


def check_gradients(
    model: BaseAlgorithm, total_norm: torch.Tensor, losses: dict[str, torch.Tensor] | None = None
) -> None:
    """Raise :class:`NumericalFault` if ``total_norm`` — the norm gradient clipping computes anyway, over
    every gradient — is NaN or inf (one scalar read per step): naming the first non-finite term of
    ``losses`` (the minibatch's loss terms) if any, else the first non-finite gradient."""
    if not torch.isfinite(total_norm):
        check_losses({name: value.item() for name, value in (losses or {}).items()}, model.num_timesteps)
        grads = {name: p.grad for name, p in model.policy.named_parameters() if p.grad is not None}
        raise NumericalFault(f"the gradient of {_first_non_finite(grads)}", model.num_timesteps)


def check_losses(losses: dict[str, float], step: int) -> None:
    """Raise :class:`NumericalFault` naming the first of the minibatch's loss terms that is NaN or inf."""
    for name, value in losses.items():
        if not math.isfinite(value):
            raise NumericalFault(f"the loss ({name} = {value})", step)


def check_update(model: BaseAlgorithm) -> None:
    """After an update: every parameter is finite, else :class:`NumericalFault` naming the first bad one."""
    params = dict(model.policy.named_parameters())
    if not _all_finite(list(params.values())):
        raise NumericalFault(f"the parameter {_first_non_finite(params)}", model.num_timesteps)


def _non_finite_copies(values: Any) -> list[int]:
    """Indices (along the first axis, one per env copy) of float entries that are NaN or inf."""
    arrays = values.values() if isinstance(values, dict) else [values]
    bad: set[int] = set()
    for array in arrays:
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad.update(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1)).tolist())
    return sorted(bad)


class EnvFaultCheck(BaseCallback):
    """Stops the run with :class:`NumericalFault` when an env copy returns a NaN/inf observation or reward."""

    def _on_step(self) -> bool:
        observations, rewards = self.locals["new_obs"], self.locals["rewards"]
        if (
            isinstance(observations, np.ndarray)
            and np.isfinite(observations).all()
            and np.isfinite(rewards).all()
        ):
            return True  # the common case, in two vectorised checks
        for what, key in (("observation", "new_obs"), ("reward", "rewards")):
            bad = _non_finite_copies(self.locals[key])
            if bad:
                copies = ", ".join(map(str, bad))
                raise NumericalFault(f"the {what} of env copy {copies}", self.num_timesteps)
        return True
