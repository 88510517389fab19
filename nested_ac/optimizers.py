"""The ``--optimizer`` choices: each maps an :class:`OptimizerConfig` to an SB3 optimizer class and kwargs;
:func:`optimizer_from_config` picks the run's optimizer (per-element step counts with unit resets).

Also :class:`UtilityLogger`, the plasticity tool that logs UPGD's scaled utilities per network.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger

from nested_ac.config import OptimizerConfig, RunConfig
from nested_ac.hooks import PlasticityTool
from nested_ac.networks import policy_networks
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


def optimizer_from_config(config: RunConfig) -> OptimizerSpec:
    """The run's optimizer class and kwargs: ``--optimizer``'s, with one step count per weight
    (:func:`with_element_steps`) when continual backprop or ReDo resets units — so a reset weight restarts
    Adam's bias correction as a fresh optimizer would (Dohare et al., Nature 2024)."""
    spec = OPTIMIZERS.get(config.optimizer.name)(config.optimizer)
    return with_element_steps(spec) if config.cbp.enabled or config.redo.enabled else spec


OPTIMIZERS.register(
    "adam", "Adam (Kingma & Ba, 2015); AdamW's decoupled decay when optimizer.weight_decay > 0", adam
)
OPTIMIZERS.register("upgd", "Adaptive UPGD (Elsayed & Mahmood, 2024): Adam-style, PPO's setting", upgd)
OPTIMIZERS.register("upgd-sgd", "UPGD (Elsayed & Mahmood, 2024): SGD form", upgd_sgd)


class UtilityLogger(PlasticityTool):
    """Logs UPGD's scaled utilities ū per network every ``every`` updates.

    Tags ``upgd/<network>/utility_mean`` (mean ū), ``upgd/<network>/frac_above_half`` (fraction of weights
    with ū > 0.5, the ones UPGD protects more than it perturbs) and ``upgd/<network>/utility_hist`` (a
    histogram of ū). The model is the one whose rollout ended last.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.updates = 0
        self.model: BaseAlgorithm | None = None

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        self.model = model

    @torch.no_grad()
    def log(self, logger: Logger) -> None:
        self.updates += 1
        if self.model is None or self.updates % self.every:
            return
        utilities = self.model.policy.optimizer.scaled_utilities()
        for network in policy_networks(self.model.policy):
            values = [utilities[p].flatten() for p in network.parameters() if p in utilities]
            if not values:
                continue
            flat = torch.cat(values)
            logger.record(f"upgd/{network.name}/utility_mean", float(flat.mean()))
            logger.record(f"upgd/{network.name}/frac_above_half", float((flat > 0.5).float().mean()))
            logger.record(f"upgd/{network.name}/utility_hist", flat.cpu(), exclude=("stdout", "log", "csv"))

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
