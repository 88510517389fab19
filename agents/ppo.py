"""ContinualPPO: Stable-Baselines3's PPO set up for continual reinforcement learning."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from nested_ac.config import RunConfig
from nested_ac.errors import unknown_choice
from nested_ac.registry import OPTIMIZERS

ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "leaky_relu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "gelu": torch.nn.GELU,
}


def policy_kwargs_from_config(config: RunConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for the configured networks and optimizer."""
    network = config.network
    if network.activation not in ACTIVATIONS:
        raise unknown_choice("activation", network.activation, ACTIVATIONS)
    optimizer_class, optimizer_kwargs = OPTIMIZERS.get(config.optimizer.name)(config.optimizer)
    return {
        "net_arch": {"pi": list(network.actor), "vf": list(network.critic)},
        "activation_fn": ACTIVATIONS[network.activation],
        "optimizer_class": optimizer_class,
        "optimizer_kwargs": optimizer_kwargs,
    }


class ContinualPPO(PPO):
    """Proximal Policy Optimization (Schulman et al., 2017) for continual RL, on Stable-Baselines3.

    Maximises the clipped surrogate ``E[min(r_t(θ) Â_t, clip(r_t(θ), 1-ε, 1+ε) Â_t)]`` with
    ``r_t(θ) = π_θ(a_t|s_t) / π_θ_old(a_t|s_t)`` and GAE(λ) advantages, plus ``c_v · (V(s) - R̂)²`` and an
    entropy bonus — SB3's PPO unchanged. What it adds is the continual-learning default network
    (separate actor and critic MLPs, 64×64 ReLU, as in the loss-of-plasticity literature) and
    construction from a :class:`~nested_ac.config.RunConfig`.
    """

    def __init__(self, policy: Any, env: Any, **kwargs: Any) -> None:
        kwargs.setdefault(
            "policy_kwargs", {"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.ReLU}
        )
        super().__init__(policy, env, **kwargs)

    @classmethod
    def from_config(cls, config: RunConfig, env: VecEnv) -> ContinualPPO:
        return cls(
            "MlpPolicy",
            env,
            **dataclasses.asdict(config.ppo),
            policy_kwargs=policy_kwargs_from_config(config),
            seed=config.seed,
            device=config.device,
            verbose=0,
        )
