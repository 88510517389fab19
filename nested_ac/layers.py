"""Hidden-layer architectures against loss of plasticity: LayerNorm, CReLU and deep Fourier features.

A hidden layer of width n is ``Linear → [LayerNorm] → activation``:

    z = W x + b,   y = LN(z) = γ ⊙ (z − μ(z)) / √(σ²(z) + ε) + β   (``network.layer_norm``),   h = φ(y)

with μ, σ² the mean and (biased) variance over the layer's n units and γ = 1, β = 0 at initialisation
(Ba, Kiros & Hinton, "Layer normalization", 2016; PyTorch's ``nn.LayerNorm``, ε = 1e-5). An activation
whose output is wider than its input says so in ``width_multiplier`` m: unit i of the layer then has the m
outputs i, n + i, …, (m − 1)·n + i, and the next Linear reads m·n features (:class:`CReLU`, :class:`Fourier`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class CReLU(nn.Module):
    """Concatenated ReLU (Shang et al., "Understanding and improving convolutional neural networks via
    concatenated rectified linear units", ICML 2016; against loss of plasticity: Abbas et al., "Loss of
    plasticity in continual deep reinforcement learning", CoLLAs 2023):

        h = [relu(z), relu(−z)]   (computed as relu([z, −z]))

    A layer of n units has 2n outputs; unit i's are h_i = relu(z_i) and h_{n+i} = relu(−z_i), so at every
    input one of them is active unless z_i = 0."""

    width_multiplier = 2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.cat((z, -z), -1))


class Fourier(nn.Module):
    """Deep Fourier features (Lewandowski, Schuurmans & Machado, "Plastic learning with deep Fourier
    features", ICLR 2025): the concatenation of a sine and a cosine of every unit's pre-activation,

        h = [sin(z), cos(z)]

    A layer of n units has 2n outputs; unit i's are sin(z_i) and cos(z_i). No further scaling of z or h
    (docs/architectures.md says why)."""

    width_multiplier = 2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat((torch.sin(z), torch.cos(z)), -1)


def width_multiplier(activation: nn.Module | type[nn.Module]) -> int:
    """How many outputs an activation (module or class) gives each unit: 1 but for :class:`CReLU` and
    :class:`Fourier` (2)."""
    return getattr(activation, "width_multiplier", 1)


def hidden_layers(
    in_features: int, widths: Sequence[int], activation_fn: type[nn.Module], layer_norm: bool
) -> nn.Sequential:
    """An MLP body: for each width n, ``Linear(in, n)``, then ``LayerNorm(n)`` where ``layer_norm``, then the
    activation; the next layer reads n·m features (m: :func:`width_multiplier`)."""
    layers: list[nn.Module] = []
    last = in_features
    for width in widths:
        layers.append(nn.Linear(last, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation_fn())
        last = width * width_multiplier(activation_fn)
    return nn.Sequential(*layers)


def output_features(in_features: int, widths: Sequence[int], activation_fn: type[nn.Module]) -> int:
    """The number of features :func:`hidden_layers` gives its head."""
    return widths[-1] * width_multiplier(activation_fn) if widths else in_features
