"""The ``--optimizer`` choices: each maps an :class:`OptimizerConfig` to an SB3 optimizer class and kwargs
(``nested_ac.build.optimizer_spec`` picks the run's: with one step count per weight when a tool resets
units)."""

from __future__ import annotations

from typing import Any

import torch

from nested_ac.config import OptimizerConfig
from nested_ac.optim import UPGD, AdaptiveUPGD, ElementwiseAdam
from nested_ac.registry import OPTIMIZERS

OptimizerSpec = tuple[type[torch.optim.Optimizer], dict[str, Any]]


def adam(config: OptimizerConfig) -> OptimizerSpec:
    kwargs: dict[str, Any] = {"betas": tuple(config.betas), "eps": config.eps}
    if config.weight_decay:
        return torch.optim.AdamW, {**kwargs, "weight_decay": config.weight_decay}
    return torch.optim.Adam, kwargs


def _utility_kwargs(config: OptimizerConfig) -> dict[str, Any]:
    return {
        "weight_decay": config.weight_decay,
        "beta_utility": config.beta_utility,
        "sigma": config.sigma,
        "protect": config.protect,
    }


def upgd(config: OptimizerConfig) -> OptimizerSpec:
    return AdaptiveUPGD, {"betas": tuple(config.betas), "eps": config.eps, **_utility_kwargs(config)}


def upgd_sgd(config: OptimizerConfig) -> OptimizerSpec:
    return UPGD, _utility_kwargs(config)


def with_element_steps(spec: OptimizerSpec) -> OptimizerSpec:
    """``spec`` with one step count per weight: Adam(W) becomes :class:`ElementwiseAdam`, UPGD gets
    ``per_element_steps``; any other optimizer is returned as it is."""
    optimizer_class, kwargs = spec
    if optimizer_class in (torch.optim.Adam, torch.optim.AdamW):
        adam_kwargs = {key: kwargs[key] for key in ("betas", "eps", "weight_decay") if key in kwargs}
        return ElementwiseAdam, adam_kwargs
    if issubclass(optimizer_class, (UPGD, AdaptiveUPGD)):
        return optimizer_class, {**kwargs, "per_element_steps": True}
    return spec


OPTIMIZERS.register(
    "adam", "Adam (Kingma & Ba, 2015); AdamW's decoupled decay when optimizer.weight_decay > 0", adam
)
OPTIMIZERS.register("upgd", "Adaptive UPGD (Elsayed & Mahmood, 2024): Adam-style, PPO's setting", upgd)
OPTIMIZERS.register("upgd-sgd", "UPGD (Elsayed & Mahmood, 2024): SGD form", upgd_sgd)
