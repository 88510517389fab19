"""The ``--optimizer`` choices: each maps an :class:`OptimizerConfig` to an SB3 optimizer class and kwargs
(the agent gives it one step count per weight when a tool resets units:
:func:`nested_ac.optim.with_element_steps`)."""

from __future__ import annotations

from typing import Any

import torch

from nested_ac.config import OptimizerConfig
from nested_ac.errors import ConfigError
from nested_ac.optim import UPGD, AdaptiveUPGD, OptimizerSpec
from nested_ac.registry import OPTIMIZERS


def adam(config: OptimizerConfig) -> OptimizerSpec:
    """Adam; AdamW for decoupled ``weight_decay``; torch Adam's own (coupled) ``weight_decay`` for ``l2``."""
    kwargs: dict[str, Any] = {"betas": tuple(config.betas), "eps": config.eps}
    if config.weight_decay and config.l2:
        raise ConfigError(
            "optimizer.weight_decay (decoupled, AdamW) and optimizer.l2 (coupled, added to the gradient) "
            "are two forms of weight decay; set one of them"
        )
    if config.weight_decay:
        return torch.optim.AdamW, {**kwargs, "weight_decay": config.weight_decay}
    if config.l2:
        return torch.optim.Adam, {**kwargs, "weight_decay": config.l2}
    return torch.optim.Adam, kwargs


def _utility_kwargs(config: OptimizerConfig) -> dict[str, Any]:
    if config.l2:
        raise ConfigError(
            f"optimizer.l2 (coupled L2) is Adam's; {config.name!r} takes decoupled optimizer.weight_decay"
        )
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


OPTIMIZERS.register(
    "adam",
    "Adam (Kingma & Ba, 2015); AdamW for optimizer.weight_decay (decoupled), coupled L2 for optimizer.l2",
    adam,
)
OPTIMIZERS.register("upgd", "Adaptive UPGD (Elsayed & Mahmood, 2024): Adam-style, PPO's setting", upgd)
OPTIMIZERS.register("upgd-sgd", "UPGD (Elsayed & Mahmood, 2024): SGD form", upgd_sgd)
