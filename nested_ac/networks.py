"""The networks of an actor-critic policy, as plasticity tools and diagnostics see them.

A network is an MLP of ``Linear → activation`` hidden layers followed by a ``Linear`` output head. For
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
    """One MLP: its hidden ``Linear`` layers, the activation module after each, and its output head.

    ``hidden[i]`` produces unit pre-activations of layer i, ``activations[i]`` their activations, and the
    outgoing weights of layer i are ``hidden[i + 1].weight`` (or ``output.weight`` for the last layer).
    """

    name: str
    hidden: tuple[nn.Linear, ...]
    activations: tuple[nn.Module, ...]
    output: nn.Linear

    def outgoing(self, layer: int) -> nn.Linear:
        """The Linear layer that reads the units of hidden layer ``layer``."""
        return self.hidden[layer + 1] if layer + 1 < len(self.hidden) else self.output

    def parameters(self) -> list[nn.Parameter]:
        return [p for module in (*self.hidden, self.output) for p in module.parameters()]

    def hidden_outputs(self, features: torch.Tensor) -> list[torch.Tensor]:
        """The activations of every hidden layer for the input ``features``, first layer first."""
        h, outputs = features, []
        for linear, activation in zip(self.hidden, self.activations, strict=True):
            h = activation(linear(h))
            outputs.append(h)
        return outputs


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
    """A :class:`Network` from an ``nn.Sequential`` of alternating Linear and activation modules."""
    modules = list(mlp)
    trainable = getattr(output, "trainable", None)  # an injected head (nested_ac.structural.InjectedHead):
    if isinstance(trainable, nn.Sequential):  # the network is the encoder and the head's trainable copy
        modules, output = [*modules, *list(trainable)[:-1]], trainable[-1]
    hidden = tuple(m for m in modules if isinstance(m, nn.Linear))
    activations = tuple(
        modules[i + 1] for i, m in enumerate(modules) if isinstance(m, nn.Linear) and i + 1 < len(modules)
    )
    if len(activations) != len(hidden) or any(isinstance(a, nn.Linear) for a in activations):
        raise ValueError(f"network {name!r} is not a sequence of Linear → activation layers: {mlp}")
    return Network(name, hidden, activations, output)


def policy_networks(policy: ActorCriticPolicy) -> list[Network]:
    """The actor and every critic of ``policy`` (see the module docstring for the names)."""
    actor = mlp_network("actor", policy.mlp_extractor.policy_net, policy.action_net)
    critics = getattr(policy, "critics", None)
    if critics is None:
        return [actor, mlp_network("critic", policy.mlp_extractor.value_net, policy.value_net)]
    return [actor] + [mlp_network(f"critic_{k}", mlp, head) for k, (mlp, head) in enumerate(critics(), 1)]
