"""ContinualPPO: Stable-Baselines3's PPO set up for continual reinforcement learning."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBufferSamples
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from nested_ac.config import RunConfig
from nested_ac.diagnostics import Diagnostics
from nested_ac.errors import ConfigError, unknown_choice
from nested_ac.faults import check_gradients, check_losses, check_update
from nested_ac.forgetting import GradientProjection, NaturalContinualLearning, SoftMasking
from nested_ac.hooks import PlasticityTool
from nested_ac.optimizers import UtilityLogger, optimizer_from_config
from nested_ac.plasticity import ContinualBackprop, L2Init, ReDo, ShrinkPerturb

# PPO's loss terms, as logged under train/ and checked for NaN on every minibatch.
LOSS_TERMS = ("policy_gradient_loss", "value_loss", "entropy_loss")

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
    optimizer_class, optimizer_kwargs = optimizer_from_config(config)
    try:  # the optimizer's own range checks, before anything is built or written
        optimizer_class([torch.zeros(1, requires_grad=True)], lr=config.ppo.learning_rate, **optimizer_kwargs)
    except ValueError as error:
        raise ConfigError(f"optimizer {config.optimizer.name!r}: {error}") from None
    return {
        "net_arch": {"pi": list(network.actor), "vf": list(network.critic)},
        "activation_fn": ACTIVATIONS[network.activation],
        "optimizer_class": optimizer_class,
        "optimizer_kwargs": optimizer_kwargs,
    }


def plasticity_tools_from_config(config: RunConfig) -> list[PlasticityTool]:
    """The plasticity tools ``config`` switches on: UPGD's utility logging with a UPGD optimizer, continual
    backprop, Shrink & Perturb, L2-Init, ReDo, and the forgetting tools SPG, gradient projection and NCL
    (their gradient hooks run in that order)."""
    tools: list[PlasticityTool] = []
    if config.diagnostics.every > 0:
        d = config.diagnostics
        tools.append(Diagnostics(d.every, d.probe_size, d.tau, d.delta))
    if config.optimizer.name.startswith("upgd") and config.optimizer.log_every > 0:
        tools.append(UtilityLogger(config.optimizer.log_every))
    try:
        if config.cbp.enabled:
            cbp = config.cbp
            tools.append(
                ContinualBackprop(cbp.replacement_rate, cbp.maturity, cbp.decay_rate, cbp.mean_corrected)
            )
        if config.shrink_perturb.mode != "off":
            sp = config.shrink_perturb
            tools.append(ShrinkPerturb(sp.mode, sp.shrink, sp.sigma, sp.alpha))
        if config.l2_init.coef:
            tools.append(L2Init(config.l2_init.coef))
        if config.redo.enabled:
            tools.append(ReDo(config.redo.tau, config.redo.every))
        if config.spg.enabled:
            tools.append(SoftMasking())
        if config.projection.enabled:
            tools.append(GradientProjection(config.projection.memory_size))
        if config.ncl.enabled:
            ncl = config.ncl
            tools.append(NaturalContinualLearning(ncl.prior, ncl.fisher_samples, ncl.max_norm))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return tools


class ContinualPPO(PPO):
    """Proximal Policy Optimization (Schulman et al., 2017) for continual RL, on Stable-Baselines3.

    Maximises the clipped surrogate ``E[min(r_t(θ) Â_t, clip(r_t(θ), 1-ε, 1+ε) Â_t)]`` with
    ``r_t(θ) = π_θ(a_t|s_t) / π_θ_old(a_t|s_t)`` and GAE(λ) advantages, plus ``c_v · (V(s) - R̂)²`` and an
    entropy bonus — SB3's PPO unchanged. What it adds is the continual-learning default network
    (separate actor and critic MLPs, 64×64 ReLU, as in the loss-of-plasticity literature) and
    construction from a :class:`~nested_ac.config.RunConfig`, and the hooks of
    :class:`~nested_ac.hooks.PlasticityTool`: each tool in ``plasticity_tools`` runs on the clipped gradients
    before every optimizer step, after every optimizer step, at every task switch, after every rollout,
    and logs after every update. A NaN or inf in a loss, a gradient or a parameter stops the update with
    :class:`~nested_ac.faults.NumericalFault`.
    """

    def __init__(
        self, policy: Any, env: Any, plasticity_tools: Sequence[PlasticityTool] = (), **kwargs: Any
    ) -> None:
        kwargs.setdefault(
            "policy_kwargs", {"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.ReLU}
        )
        self.plasticity_tools = list(plasticity_tools)
        self._grad_norms: list[torch.Tensor] = []
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self.policy.optimizer.register_step_post_hook(self._after_optimizer_step)

    def _before_optimizer_step(self) -> None:
        """Hand the clipped gradients to every tool's ``before_optimizer_step`` (masking, projection …)."""
        for tool in self.plasticity_tools:
            tool.before_optimizer_step(self, self.policy.optimizer)

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
        self._update()
        check_update(self)
        for tool in self.plasticity_tools:
            tool.log(self.logger)

    def _update(self) -> None:
        """One PPO update on the rollout buffer: SB3's ``PPO.train``, step for step and number for number.

        It is written out as a loop over :meth:`_loss` (the minibatch loss) and :meth:`_optimizer_step` so
        that subclasses add terms to the loss or work after each step without a second copy of PPO.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        progress = self._current_progress_remaining
        clip_range = self.clip_range(progress)
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(progress)
        stats: dict[str, list[float]] = {name: [] for name in (*LOSS_TERMS, "clip_fraction")}
        self._grad_norms.clear()
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for batch in self.rollout_buffer.get(self.batch_size):
                loss, _, approx_kl_div = self._loss(batch, clip_range, clip_range_vf, stats)
                check_losses({name: stats[name][-1] for name in LOSS_TERMS}, self.num_timesteps)
                approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break
                self._optimizer_step(loss)
            self._n_updates += 1
            if not continue_training:
                break

        buffer = self.rollout_buffer
        for name in LOSS_TERMS:
            self.logger.record(f"train/{name}", np.mean(stats[name]))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(stats["clip_fraction"]))
        self.logger.record("train/loss", loss.item())
        self.logger.record(
            "train/explained_variance", explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        )
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self._grad_norms:  # the gradient norm before clipping, mean over the update's steps
            self.logger.record("train/grad_norm", torch.stack(self._grad_norms).mean().item())
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _loss(
        self,
        batch: RolloutBufferSamples,
        clip_range: float,
        clip_range_vf: float | None,
        stats: dict[str, list[float]],
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """PPO's minibatch loss ``-L_clip + c_e·L_entropy + c_v·E[(V(s) - R̂)²]``, computed as SB3 does.

        Returns the loss, the critic's predictions ``V(s)`` on the minibatch (with their graph) and the
        approximate KL divergence; appends the loss terms to ``stats``.
        """
        actions = batch.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = batch.actions.long().flatten()
        values, log_prob, entropy = self.policy.evaluate_actions(batch.observations, actions)
        values = values.flatten()
        advantages = batch.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        ratio = torch.exp(log_prob - batch.old_log_prob)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()
        stats["policy_gradient_loss"].append(policy_loss.item())
        stats["clip_fraction"].append(torch.mean((torch.abs(ratio - 1) > clip_range).float()).item())

        values_pred = values
        if clip_range_vf is not None:
            values_pred = batch.old_values + torch.clamp(
                values - batch.old_values, -clip_range_vf, clip_range_vf
            )
        value_loss = torch.nn.functional.mse_loss(batch.returns, values_pred)
        stats["value_loss"].append(value_loss.item())

        entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
        stats["entropy_loss"].append(entropy_loss.item())
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

        with torch.no_grad():
            log_ratio = log_prob - batch.old_log_prob
            approx_kl_div = torch.mean((torch.exp(log_ratio) - 1) - log_ratio).item()
        return loss, values, approx_kl_div

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss``, clip the gradient norm to ``max_grad_norm`` and step the optimizer."""
        self.policy.optimizer.zero_grad()
        loss.backward()
        total_norm = self._clip_gradients()
        check_gradients(self, total_norm)
        self._grad_norms.append(total_norm)
        self._before_optimizer_step()
        self.policy.optimizer.step()

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the gradient norm to ``max_grad_norm``; returns the norm before clipping (no sync)."""
        return torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)

    def _excluded_save_params(self) -> list[str]:
        # Tools hold references into the policy; their own state goes through state_dict().
        return [*super()._excluded_save_params(), "plasticity_tools", "_grad_norms"]

    @classmethod
    def from_config(cls, config: RunConfig, env: VecEnv) -> ContinualPPO:
        tools = plasticity_tools_from_config(config)
        return cls("MlpPolicy", env, plasticity_tools=tools, **cls.kwargs_from_config(config))

    @classmethod
    def kwargs_from_config(cls, config: RunConfig) -> dict[str, Any]:
        """Constructor keyword arguments for ``config``; a ConfigError if they are out of range."""
        return {
            **dataclasses.asdict(config.ppo),
            "policy_kwargs": policy_kwargs_from_config(config),
            "seed": config.seed,
            "device": config.device,
            "verbose": 0,
        }
