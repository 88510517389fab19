"""ContinualPPO: Stable-Baselines3's PPO set up for continual reinforcement learning."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from nested_ac.config import RunConfig
from nested_ac.errors import unknown_choice
from nested_ac.faults import GradientCheck, NumericalFault, check_update, loss_fault
from nested_ac.hooks import PlasticityTool
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
    construction from a :class:`~nested_ac.config.RunConfig`, and the hooks of
    :class:`~nested_ac.hooks.PlasticityTool`: each tool in ``plasticity_tools`` runs after every optimizer
    step, at every task switch, after every rollout, and logs after every update. A NaN or inf in a
    loss, a gradient or a parameter stops the update with :class:`~nested_ac.faults.NumericalFault`.
    """

    def __init__(
        self, policy: Any, env: Any, plasticity_tools: Sequence[PlasticityTool] = (), **kwargs: Any
    ) -> None:
        kwargs.setdefault(
            "policy_kwargs", {"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.ReLU}
        )
        self.plasticity_tools = list(plasticity_tools)
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self.policy.optimizer.register_step_pre_hook(GradientCheck(self))
        self.policy.optimizer.register_step_post_hook(self._after_optimizer_step)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        for tool in self.plasticity_tools:
            tool.after_optimizer_step(self, optimizer)

    def notify_task_switch(self, task: int) -> None:
        """Tell every tool that the environment's task is now ``task`` (called by the task clock)."""
        for tool in self.plasticity_tools:
            tool.on_task_switch(self, self.policy.optimizer, task)

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        collected = super().collect_rollouts(*args, **kwargs)
        for tool in self.plasticity_tools:
            tool.on_rollout_end(self)
        return collected

    def train(self) -> None:
        try:
            super().train()
        except NumericalFault as fault:
            raise loss_fault(fault, fault.__traceback__) from None
        check_update(self)
        for tool in self.plasticity_tools:
            tool.log(self.logger)

    def _excluded_save_params(self) -> list[str]:
        # Tools hold references into the policy; their own state goes through state_dict().
        return [*super()._excluded_save_params(), "plasticity_tools"]

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
