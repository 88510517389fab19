"""The ``--optimizer`` choices: each maps an :class:`OptimizerConfig` to an SB3 optimizer class and kwargs."""

from __future__ import annotations

from typing import Any

import torch

from nested_ac.config import OptimizerConfig
from nested_ac.registry import OPTIMIZERS

OptimizerSpec = tuple[type[torch.optim.Optimizer], dict[str, Any]]


def adam(config: OptimizerConfig) -> OptimizerSpec:
    kwargs: dict[str, Any] = {"betas": tuple(config.betas), "eps": config.eps}
    if config.weight_decay:
        return torch.optim.AdamW, {**kwargs, "weight_decay": config.weight_decay}
    return torch.optim.Adam, kwargs


OPTIMIZERS.register(
    "adam", "Adam (Kingma & Ba, 2015); AdamW's decoupled decay when optimizer.weight_decay > 0", adam
)
