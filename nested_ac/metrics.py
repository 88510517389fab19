"""Plasticity diagnostics: pure functions on tensors, no gradients."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


@torch.no_grad()
def dormant_mask(activation: torch.Tensor, tau: float = 0.025, outputs_per_unit: int = 1) -> torch.Tensor:
    """Which units of one layer are τ-dormant (ReDo: Sokar et al., ICML 2023).

    ``activation`` is (batch × units); unit i's score is s_i = E|h_i| / mean_j E|h_j| and it is dormant if
    s_i ≤ τ. A layer whose units are all zero is all dormant. With ``outputs_per_unit`` m > 1 (CReLU,
    Fourier features: ``activation`` is batch × m·n, unit i's outputs i, n + i, …) a unit's activity is the
    sum over its outputs, E|h_i| + E|h_{n+i}| + …: it is dormant only when all of them are.
    """
    mean_abs = activation.reshape(-1, activation.shape[-1]).abs().mean(0)
    if outputs_per_unit > 1:
        mean_abs = mean_abs.view(outputs_per_unit, -1).sum(0)
    layer_mean = mean_abs.mean()
    if layer_mean <= 0:
        return torch.ones_like(mean_abs, dtype=torch.bool)
    return mean_abs / layer_mean <= tau


@torch.no_grad()
def dormant_ratio(
    activations: Sequence[torch.Tensor], tau: float = 0.025, outputs_per_unit: Sequence[int] | None = None
) -> float:
    """The fraction of τ-dormant units over all hidden layers of one network (see :func:`dormant_mask`;
    ``outputs_per_unit``: each layer's, default 1)."""
    widths = outputs_per_unit or [1] * len(activations)
    masks = [dormant_mask(activation, tau, m) for activation, m in zip(activations, widths, strict=True)]
    return float(torch.cat(masks).float().mean())


@torch.no_grad()
def singular_values(features: torch.Tensor) -> torch.Tensor:
    """Singular values σ_1 ≥ σ_2 ≥ … of a (batch × units) feature matrix."""
    return torch.linalg.svdvals(features.reshape(-1, features.shape[-1]).float())


@torch.no_grad()
def srank(features: torch.Tensor, delta: float = 0.01, sigma: torch.Tensor | None = None) -> int:
    """Effective feature rank of Kumar et al. ("Implicit under-parameterization", ICLR 2021):

        srank_δ = min{k : Σ_{i≤k} σ_i / Σ_i σ_i ≥ 1 − δ}

    over the singular values of the feature matrix (pass ``sigma`` to reuse them); 0 for all-zero features.
    At most the number of singular values, also when rounding keeps the cumulative share below 1 − δ.
    """
    sigma = singular_values(features) if sigma is None else sigma
    total = sigma.sum()
    if total <= 0:
        return 0
    cumulative = torch.cumsum(sigma, 0) / total
    first = int(torch.searchsorted(cumulative, torch.tensor(1.0 - delta, dtype=cumulative.dtype)).item())
    return min(first + 1, len(sigma))


@torch.no_grad()
def effective_rank(features: torch.Tensor, sigma: torch.Tensor | None = None) -> float:
    """Effective rank of Roy & Vetterli (EUSIPCO 2007): exp(−Σ p_i log p_i), p_i = σ_i / Σ_j σ_j
    (0·log 0 = 0); 0 for all-zero features."""
    sigma = singular_values(features) if sigma is None else sigma
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def mean_abs_weight(params: Iterable[torch.Tensor]) -> float:
    """Mean |w| over every entry of ``params`` (weight growth, e.g. Lyle et al. 2023)."""
    return float(torch.cat([p.detach().abs().flatten() for p in params]).mean())


@torch.no_grad()
def distance_from_init(params: Iterable[torch.Tensor], initial: Iterable[torch.Tensor]) -> float:
    """L2 distance ‖θ − θ_0‖ of all of ``params`` from their ``initial`` values, concatenated."""
    squares = [(p.detach() - q).pow(2).sum() for p, q in zip(params, initial, strict=True)]
    return float(torch.stack(squares).sum().sqrt())


@torch.no_grad()
def global_grad_norm(params: Iterable[torch.Tensor]) -> float:
    """L2 norm of every gradient of ``params`` together (parameters without a gradient are skipped)."""
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


@torch.no_grad()
def policy_entropy(distribution: torch.distributions.Distribution) -> float:
    """Mean entropy of a batch of action distributions (a torch or SB3 ``Distribution``)."""
    return float(distribution.entropy().mean())
