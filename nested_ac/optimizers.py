"""The ``--optimizer`` choices: each maps an :class:`OptimizerConfig` to an SB3 optimizer class and kwargs
(the agent gives it one step count per weight when a tool resets units:
:func:`nested_ac.optim.with_element_steps`)."""

from __future__ import annotations

from typing import Any

import torch

from nested_ac.config import OptimizerConfig
from nested_ac.errors import ConfigError
from nested_ac.optim import TRAC, UPGD, AdaptiveUPGD, OptimizerSpec
from nested_ac.registry import OPTIMIZERS


def _adam_kwargs(config: OptimizerConfig) -> dict[str, Any]:
    """Adam's ``betas`` and ``eps``; a ConfigError where both forms of weight decay are set."""
    if config.weight_decay and config.l2:
        raise ConfigError(
            "optimizer.weight_decay (decoupled, AdamW) and optimizer.l2 (coupled, added to the gradient) "
            "are two forms of weight decay; set one of them"
        )
    return {"betas": tuple(config.betas), "eps": config.eps}


def adam(config: OptimizerConfig) -> OptimizerSpec:
    """Adam; AdamW for decoupled ``weight_decay``; torch Adam's own (coupled) ``weight_decay`` for ``l2``."""
    kwargs = _adam_kwargs(config)
    if config.weight_decay:
        return torch.optim.AdamW, {**kwargs, "weight_decay": config.weight_decay}
    if config.l2:
        return torch.optim.Adam, {**kwargs, "weight_decay": config.l2}
    return torch.optim.Adam, kwargs


def trac(config: OptimizerConfig) -> OptimizerSpec:
    """TRAC over Adam: Adam's ``betas``, ``eps``, ``weight_decay`` (decoupled) or ``l2`` (coupled) on the base
    iterate; the tuners take the paper's fixed settings (parameter-free)."""
    return TRAC, {**_adam_kwargs(config), "weight_decay": config.weight_decay, "l2": config.l2}


def kron(config: OptimizerConfig) -> OptimizerSpec:
    """Kron (heavyball's PSGDKron): ``betas`` and decoupled ``weight_decay``; imported only here."""
    if config.l2:
        raise ConfigError(
            "optimizer.l2 (coupled L2) is Adam's; 'kron' takes decoupled optimizer.weight_decay"
        )
    from nested_ac.optim.kron import Kron

    return Kron, {"betas": tuple(config.betas), "weight_decay": config.weight_decay}


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
OPTIMIZERS.register(
    "trac",
    "TRAC (Muppidi, Zhang & Yang, NeurIPS 2024): parameter-free scale θ_ref + S·(θ_Adam − θ_ref), over Adam",
    trac,
)
OPTIMIZERS.register(
    "kron",
    "Kron: PSGD with Kronecker-factored preconditioners (Li, 2018), heavyball's PSGDKron, run eagerly",
    kron,
)
