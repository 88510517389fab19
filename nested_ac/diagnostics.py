"""Plasticity diagnostics during training, logged to TensorBoard every N updates: :class:`Diagnostics`
(every run's) and :class:`UtilityLogger` (UPGD's utilities)."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger

from nested_ac.hooks import Tool
from nested_ac.metrics import (
    distance_from_init,
    dormant_ratio,
    effective_rank,
    mean_abs_weight,
    policy_entropy,
    singular_values,
    srank,
)
from nested_ac.networks import policy_networks, probe


class Diagnostics(Tool):
    """Every ``every`` rollouts, on a probe batch of that rollout's observations (no gradients), per
    network (``actor``, ``critic`` or ``critic_<k>``):

    ``plasticity/<network>/dormant`` (fraction of τ-dormant hidden units, ReDo's score),
    ``…/srank`` (srank_δ of the last hidden layer's features), ``…/erank`` (their effective rank),
    ``…/weight_mean_abs`` and ``…/dist_from_init`` (‖θ − θ_0‖, θ_0 the weights at the first rollout); and
    ``plasticity/policy_entropy``. The gradient norm before clipping is ``train/grad_norm`` (every update).
    """

    def __init__(
        self, every: int = 10, probe_size: int = 512, tau: float = 0.025, delta: float = 0.01
    ) -> None:
        self.every, self.probe_size, self.tau, self.delta = every, probe_size, tau, delta
        self.rollouts = 0
        self.initial: dict[str, list[torch.Tensor]] = {}
        self.pending: dict[str, float] = {}

    @torch.no_grad()
    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        networks = policy_networks(model.policy)
        if not self.initial:
            self.initial = {n.name: [p.detach().clone() for p in n.parameters()] for n in networks}
        self.rollouts += 1
        if (self.rollouts - 1) % self.every:
            return
        observations, features = probe(model, self.probe_size)
        for network in networks:
            activations = network.hidden_outputs(features)
            tag = f"plasticity/{network.name}"
            if activations:
                sigma = singular_values(activations[-1])
                widths = [network.width(layer) for layer in range(len(activations))]
                self.pending[f"{tag}/dormant"] = dormant_ratio(activations, self.tau, widths)
                self.pending[f"{tag}/srank"] = srank(activations[-1], self.delta, sigma)
                self.pending[f"{tag}/erank"] = effective_rank(activations[-1], sigma)
            self.pending[f"{tag}/weight_mean_abs"] = mean_abs_weight(network.parameters())
            self.pending[f"{tag}/dist_from_init"] = distance_from_init(
                network.parameters(), self.initial[network.name]
            )
        distribution = model.policy.get_distribution(observations)
        self.pending["plasticity/policy_entropy"] = policy_entropy(distribution)

    def log(self, logger: Logger) -> None:
        for tag, value in self.pending.items():
            logger.record(tag, value)
        self.pending = {}

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts": self.rollouts, "initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts, self.initial = state["rollouts"], state["initial"]


class UtilityLogger(Tool):
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
        if self.model is not None and not self.updates % self.every:
            self.record(logger, self.model.policy.optimizer)

    def record(self, logger: Logger, optimizer: torch.optim.Optimizer) -> None:
        """Record what ``optimizer`` holds now (here: UPGD's scaled utilities per network)."""
        utilities = optimizer.scaled_utilities()
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


class TracScaleLogger(UtilityLogger):
    """Logs TRAC's scale S_t (:class:`~nested_ac.optim.TRAC`: θ = θ_ref + S·(θ^base − θ_ref)) every
    ``every`` updates, as ``trac/scale``."""

    def record(self, logger: Logger, optimizer: torch.optim.Optimizer) -> None:
        logger.record("trac/scale", optimizer.scale)
