"""The networks of an actor-critic policy, as plasticity tools and diagnostics see them.

A network is an MLP of ``Linear → [LayerNorm] → activation`` hidden layers (:mod:`nested_ac.layers`)
followed by a ``Linear`` output head. For
SB3's ``ActorCriticPolicy`` with separate actor and critic MLPs that is the actor
(``mlp_extractor.policy_net`` + ``action_net``) and the critic (``mlp_extractor.value_net`` +
``value_net``); a policy with a ``critics()`` method (the nested-critic agent) contributes every critic it
lists, named ``critic_1`` (inner) … ``critic_K`` (outermost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from nested_ac.layers import width_multiplier

# ``network.init``: SB3's orthogonal initialisation, or LeCun-uniform (Dohare et al.'s PPO).
INITIALISATIONS = ("orthogonal", "lecun_uniform")


@torch.no_grad()
def lecun_uniform_(module: nn.Module) -> None:
    """W ~ U(−√(3/fan_in), √(3/fan_in)) and b = 0 for a ``Linear`` ``module`` (weights of variance 1/fan_in,
    LeCun et al. 1998, drawn uniformly): the initialisation of every layer, output heads included, in
    Dohare et al.'s PPO ("Loss of plasticity in deep continual learning", Nature 2024). Other modules are
    left alone, so ``network.apply(lecun_uniform_)`` initialises an MLP."""
    if isinstance(module, nn.Linear):
        bound = math.sqrt(3 / module.in_features)
        module.weight.uniform_(-bound, bound)
        if module.bias is not None:
            module.bias.zero_()


@dataclass(frozen=True)
class Network:
    """One MLP: its hidden ``Linear`` layers, the LayerNorm (or None) and activation module after each, and
    its output head.

    ``hidden[i]`` produces the pre-activations z of layer i's n units, ``norms[i]`` (if not None) normalises
    them, ``activations[i]`` gives their m·n outputs (m = :meth:`width`: unit j's outputs are j, n + j, …,
    :func:`unit_outputs`), and the outgoing weights of layer i are ``outgoing(i).weight``, whose columns
    :meth:`outgoing_columns` lists for given units. ``norms`` defaults to no LayerNorm anywhere.
    """

    name: str
    hidden: tuple[nn.Linear, ...]
    activations: tuple[nn.Module, ...]
    output: nn.Linear
    norms: tuple[nn.LayerNorm | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.norms:
            object.__setattr__(self, "norms", (None,) * len(self.hidden))

    def outgoing(self, layer: int) -> nn.Linear:
        """The Linear layer that reads the units of hidden layer ``layer``."""
        return self.hidden[layer + 1] if layer + 1 < len(self.hidden) else self.output

    def width(self, layer: int) -> int:
        """How many outputs each unit of hidden layer ``layer`` has (2 for CReLU and Fourier features)."""
        return width_multiplier(self.activations[layer])

    def outgoing_columns(self, layer: int, units: torch.Tensor) -> torch.Tensor:
        """The columns of ``outgoing(layer).weight`` that read ``units`` of hidden layer ``layer``."""
        return unit_outputs(units, self.hidden[layer].out_features, self.width(layer))

    def parameters(self) -> list[nn.Parameter]:
        modules = [m for pair in zip(self.hidden, self.norms, strict=True) for m in pair if m is not None]
        return [p for module in (*modules, self.output) for p in module.parameters()]

    def hidden_outputs(self, features: torch.Tensor) -> list[torch.Tensor]:
        """The activations of every hidden layer for the input ``features``, first layer first."""
        h, outputs = features, []
        for linear, norm, activation in zip(self.hidden, self.norms, self.activations, strict=True):
            z = linear(h)
            h = activation(z if norm is None else norm(z))
            outputs.append(h)
        return outputs


def unit_outputs(units: torch.Tensor, width: int, multiplier: int) -> torch.Tensor:
    """The outputs of ``units`` of a layer of ``width`` units whose activation gives each unit
    ``multiplier`` outputs: units, units + width, …; ``units`` itself for one output each."""
    if multiplier == 1:
        return units
    return torch.cat([units + k * width for k in range(multiplier)])


def parameter_names(module: nn.Module) -> dict[int, str]:
    """Each parameter's name in ``module`` (as ``named_parameters`` gives it), by the parameter's id: how
    tools key their per-parameter state (L2-Init's θ_0, SPG's mask, NCL's precision …) by policy name."""
    return {id(parameter): name for name, parameter in module.named_parameters()}


def probe(model: BaseAlgorithm, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A probe batch: the first ``size`` observations of the last rollout (on the policy's device) and the
    policy's features of them (the actor's, where actor and critic have separate extractors). Call it under
    ``torch.no_grad()``."""
    buffer, policy = model.rollout_buffer, model.policy
    observations = torch.as_tensor(
        buffer.observations.reshape(-1, *buffer.obs_shape)[:size], device=policy.device
    )
    features = policy.extract_features(observations)
    return observations, features[0] if isinstance(features, tuple) else features


def mlp_network(name: str, mlp: nn.Sequential, output: nn.Linear) -> Network:
    """A :class:`Network` from an ``nn.Sequential`` of ``Linear → [LayerNorm] → activation`` layers."""
    modules, hidden, norms, activations = list(mlp), [], [], []
    trainable = getattr(output, "trainable", None)  # an injected head (nested_ac.structural.InjectedHead):
    if isinstance(trainable, nn.Sequential):  # the network is the encoder and the head's trainable copy
        modules, output = [*modules, *list(trainable)[:-1]], trainable[-1]
    index = 0
    while index < len(modules):
        linear = modules[index]
        norm = modules[index + 1] if index + 1 < len(modules) else None
        norm = norm if isinstance(norm, nn.LayerNorm) else None
        index += 1 if norm is None else 2
        activation = modules[index] if index < len(modules) else None
        if (
            not isinstance(linear, nn.Linear)
            or activation is None
            or isinstance(activation, _NOT_ACTIVATIONS)
        ):
            raise ValueError(
                f"network {name!r} is not a sequence of Linear → [LayerNorm] → activation layers: {mlp}"
            )
        hidden.append(linear)
        norms.append(norm)
        activations.append(activation)
        index += 1
    return Network(name, tuple(hidden), tuple(activations), output, tuple(norms))


_NOT_ACTIVATIONS = (nn.Linear, nn.LayerNorm)


def policy_networks(policy: ActorCriticPolicy) -> list[Network]:
    """The actor and every critic of ``policy`` (see the module docstring for the names)."""
    actor = mlp_network("actor", policy.mlp_extractor.policy_net, policy.action_net)
    critics = getattr(policy, "critics", None)
    if critics is None:
        return [actor, mlp_network("critic", policy.mlp_extractor.value_net, policy.value_net)]
    return [actor] + [mlp_network(f"critic_{k}", mlp, head) for k, (mlp, head) in enumerate(critics(), 1)]
