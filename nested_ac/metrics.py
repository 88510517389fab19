"""Plasticity diagnostics: pure functions on tensors, no gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def dormant_mask(activation: torch.Tensor, tau: float = 0.025) -> torch.Tensor:
    """Which units of one layer are τ-dormant (ReDo: Sokar et al., ICML 2023).

    ``activation`` is (batch × units); unit i's score is s_i = E|h_i| / mean_j E|h_j| and it is dormant if
    s_i ≤ τ. A layer whose units are all zero is all dormant.
    """
    mean_abs = activation.reshape(-1, activation.shape[-1]).abs().mean(0)
    layer_mean = mean_abs.mean()
    if layer_mean <= 0:
        return torch.ones_like(mean_abs, dtype=torch.bool)
    return mean_abs / layer_mean <= tau


@torch.no_grad()
def dormant_ratio(activations: Sequence[torch.Tensor], tau: float = 0.025) -> float:
    """The fraction of τ-dormant units over all hidden layers of one network (see :func:`dormant_mask`)."""
    masks = [dormant_mask(activation, tau) for activation in activations]
    return float(torch.cat(masks).float().mean())
