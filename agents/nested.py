"""NestedPPO: PPO with a chain of K critics, each outer one a slowly moving learned loss for the inner one."""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBufferSamples
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import Schedule as LearningRateSchedule
from stable_baselines3.common.utils import explained_variance
from torch import nn

from nested_ac.agents.policy import ContinualActorCriticPolicy
from nested_ac.agents.ppo import ContinualPPO, LossStats, clip_flat_grad_norm, clip_grad_norm
from nested_ac.errors import ConfigError, unknown_choice
from nested_ac.layers import output_features
from nested_ac.networks import Network

MODES = ("distill", "polyak")
PROBE_SIZE = 256  # states of the first rollout on which critic churn is measured

Critic = tuple[nn.Module, nn.Module]  # (hidden MLP, linear value head): V(s) = head(mlp(features(s)))


def nested_critic_terms(values: list[torch.Tensor], kappa: float) -> list[torch.Tensor]:
    """The nested part of each critic's loss, from the predictions ``values`` = [V_1(s), …, V_K(s)].

    ``term_1 = κ·E[(V_1 - sg V_2)²]`` (PPO's ``E[(V_1 - R̂)²]`` is the rest of L(V_1)) and
    ``term_k = E[(V_k - sg V_{k-1})²] + κ·E[(V_k - sg V_{k+1})²]`` for 1 < k ≤ K (no κ part for k = K);
    ``sg`` is stop-gradient (``detach``), so each term trains only its own critic.
    """
    mse = nn.functional.mse_loss
    last = len(values) - 1
    terms = []
    for k, value in enumerate(values):
        term = mse(value, values[k - 1].detach()) if k > 0 else value.new_zeros(())
        if k < last:
            term = term + kappa * mse(value, values[k + 1].detach())
        terms.append(term)
    return terms


def nested_critic_derivatives(
    values: list[torch.Tensor], kappa: float, every_level: bool
) -> list[torch.Tensor | None]:
    """∂/∂V_k(s) per sample of the sum of :func:`nested_critic_terms` (``every_level``; else of ``term_1``
    alone, the outer critics getting None): ``2κ(V_1 - V_2)/n`` for V_1 and
    ``2(V_k - V_{k-1})/n + 2κ(V_k - V_{k+1})/n`` (no κ part for k = K) for k > 1."""
    n, last = len(values[0]), len(values) - 1
    derivatives: list[torch.Tensor | None] = []
    for k, value in enumerate(values):
        if k > 0 and not every_level:
            derivatives.append(None)
            continue
        derivative = (value - values[k - 1]) * (2 / n) if k > 0 else torch.zeros_like(value)
        if k < last:
            derivative = derivative + (value - values[k + 1]) * (2 * kappa / n)
        derivatives.append(derivative)
    return derivatives


class NestedActorCriticPolicy(ContinualActorCriticPolicy):
    """PPO's policy (the actor and the inner critic V_1) plus outer critics V_2 … V_K.

    The base policy is built and initialised exactly as for PPO; the outer critics (``levels - 1`` MLPs of
    ``outer_net_arch`` widths, default V_1's, initialised as PPO's: ``initialise``) are created afterwards
    inside ``torch.random.fork_rng``, so the random stream that follows is PPO's, and PPO's optimizer gets a
    param group for each (not rebuilt: UPGD's noise keeps PPO's seed). The optimizer holds one
    param group per level: group 0 is every base parameter in PPO's order, group k-1 is V_k's with
    ``lr_scale`` = ρ_lr^(k-1), the factor :meth:`NestedPPO._update_learning_rate` applies to the schedule.
    :meth:`critics` lists V_1 … V_K as (MLP, head) pairs of ``nn.Sequential`` Linear→[LayerNorm]→activation
    layers (built as PPO's, ``build_hidden``) and a ``nn.Linear`` head: that is where plasticity tools find
    every critic.
    """

    def __init__(
        self,
        *args: Any,
        levels: int = 1,
        outer_net_arch: list[int] | None = None,
        lr_ratio: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.levels = levels
        self.outer_net_arch = outer_net_arch
        self.lr_ratio = lr_ratio
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: LearningRateSchedule) -> None:
        super()._build(lr_schedule)
        inner_widths = [
            layer.out_features for layer in self.mlp_extractor.value_net if isinstance(layer, nn.Linear)
        ]
        widths = inner_widths if self.outer_net_arch is None else self.outer_net_arch
        self.outer_mlps, self.outer_heads = nn.ModuleList(), nn.ModuleList()
        with torch.random.fork_rng(devices=[]):
            for _ in range(self.levels - 1):
                mlp = self.build_hidden(widths)
                head = nn.Linear(output_features(self.features_dim, widths, self.activation_fn), 1)
                self.initialise(mlp, gain=np.sqrt(2))
                self.initialise(head, gain=1)
                self.outer_mlps.append(mlp)
                self.outer_heads.append(head)
        # PPO's optimizer (built by the base policy) gains a group per outer critic; building a second one
        # would draw from the global RNG again (UPGD seeds its noise from it) and end K = 1 ≡ PPO.
        lr = lr_schedule(1)
        self.optimizer.param_groups[0]["lr_scale"] = 1.0
        for level, (mlp, head) in enumerate(self.critics()[1:], start=1):
            scale = self.lr_ratio**level
            self.optimizer.add_param_group(
                {"params": [*mlp.parameters(), *head.parameters()], "lr": lr * scale, "lr_scale": scale}
            )

    def critics(self) -> list[Critic]:
        """The value networks V_1 (inner, PPO's critic) … V_K (outermost) as (MLP, head) pairs."""
        return [
            (self.mlp_extractor.value_net, self.value_net),
            *zip(self.outer_mlps, self.outer_heads, strict=True),
        ]

    def outer_values(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """[V_2(s), …, V_K(s)], each of shape (batch,)."""
        features = self.vf_features_extractor(
            preprocess_obs(obs, self.observation_space, self.normalize_images)
        )
        return [
            head(mlp(features)).flatten() for mlp, head in zip(self.outer_mlps, self.outer_heads, strict=True)
        ]

    def critic_values(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """[V_1(s), …, V_K(s)], each of shape (batch,)."""
        return [self.predict_values(obs).flatten(), *self.outer_values(obs)]

    @torch.no_grad()
    def polyak_update(self, tau: float) -> None:
        """θ_k ← (1 - τ)·θ_k + τ·θ_{k-1} for k = 2 … K, in that order."""
        for inner, outer in pairwise(self.critics()):
            for target, source in zip(_parameters(outer), _parameters(inner), strict=True):
                target.lerp_(source, tau)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            **super()._get_constructor_parameters(),
            "levels": self.levels,
            "outer_net_arch": self.outer_net_arch,
            "lr_ratio": self.lr_ratio,
        }


def _parameters(critic: Critic) -> list[nn.Parameter]:
    mlp, head = critic
    return [*mlp.parameters(), *head.parameters()]


class NestedPPO(ContinualPPO):
    """Nested actor-critic: PPO whose critic is the innermost of K critics, each a learned loss for the next.

    The project's own idea: every critic adds one more level of delay, a chain of low-pass filters on the
    reward, so the outer critics remember what the inner one has drifted away from; once the outer critics
    stop moving (``freeze_outer_after``) they are a fixed learned loss while the inner critic and the actor
    keep learning on a changing world. With R̂ PPO's returns (GAE advantages + V_1's old values), the actor
    trains against V_1 only (PPO's clipped surrogate and entropy bonus, unchanged) and the critics minimise

        L(V_1) = E[(V_1(s) - R̂)²] + κ·E[(V_1(s) - sg V_2(s))²]
        L(V_k) = E[(V_k(s) - sg V_{k-1}(s))²] + κ·E[(V_k(s) - sg V_{k+1}(s))²]   for 1 < k ≤ K
        lr(V_k) = lr·ρ_lr^(k-1)

    (the κ part of L(V_K) is absent; ``sg`` is stop-gradient; :func:`nested_critic_terms`), each weighted by
    PPO's value coefficient c_v. ``mode="polyak"`` replaces the outer losses by
    θ_k ← (1 - τ)·θ_k + τ·θ_{k-1} after every optimizer step (same shapes required). After
    ``freeze_outer_after`` environment steps (checked at each update) V_2 … V_K get no gradient and no
    Polyak step: their parameters stay fixed. Gradients are clipped to ``max_grad_norm`` per level: actor
    and V_1 together exactly as PPO clips them, each outer critic on its own. With K = 1, or κ = 0 (the outer
    critics then never touch the inner loss), the actor and V_1 get PPO's updates number for number.

    Logs ``nested/critic_<k>/value_mean``, ``explained_variance`` (against R̂) and ``gap`` (E|V_k - V_{k+1}|,
    k < K) on each rollout before the update, ``churn`` (E|ΔV_k| over the update on a fixed probe set: the
    first rollout's first 256 states) and ``loss`` (the minibatch mean of V_k's nested term).
    """

    policy_aliases: ClassVar[dict[str, type[ActorCriticPolicy]]] = {"MlpPolicy": NestedActorCriticPolicy}
    policy: NestedActorCriticPolicy

    def __init__(
        self,
        policy: Any,
        env: Any,
        levels: int = 2,
        kappa: float = 1.0,
        lr_ratio: float = 0.1,
        mode: str = "distill",
        tau: float = 0.02,
        freeze_outer_after: int | None = None,
        outer_net_arch: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        check_nested(levels, kappa, lr_ratio, mode, tau, freeze_outer_after, outer_net_arch)
        self.kappa, self.mode, self.tau, self.freeze_outer_after = kappa, mode, tau, freeze_outer_after
        self._probe: torch.Tensor | None = None
        self._probe_values: list[torch.Tensor] = []
        policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
        policy_kwargs.update(levels=levels, outer_net_arch=outer_net_arch, lr_ratio=lr_ratio)
        super().__init__(policy, env, policy_kwargs=policy_kwargs, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        if self.mode == "polyak":
            shapes = [[p.shape for p in _parameters(critic)] for critic in self.policy.critics()]
            if any(shape != shapes[0] for shape in shapes):
                raise ConfigError(
                    "nested.mode='polyak' needs every outer critic shaped like the inner one; set "
                    "nested.critic to network.critic (or null) or use nested.mode='distill'"
                )

    def outer_frozen(self) -> bool:
        """True once more than ``freeze_outer_after`` environment steps have been collected."""
        return self.freeze_outer_after is not None and self.num_timesteps > self.freeze_outer_after

    def trainable_networks(self) -> dict[str, Network]:
        """PPO's networks (the actor and every critic ``critic_1`` … ``critic_K``), less the outer critics
        while they are frozen (:meth:`outer_frozen`)."""
        networks = super().trainable_networks()
        if not self.outer_frozen():
            return networks
        outer = {f"critic_{level}" for level in range(2, self.policy.levels + 1)}
        return {name: network for name, network in networks.items() if name not in outer}

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)  # sets every group to the schedule's lr
        for group in self.policy.optimizer.param_groups:
            group["lr"] *= group["lr_scale"]

    def _loss(
        self,
        batch: RolloutBufferSamples,
        clip_range: float,
        clip_range_vf: float | None,
        stats: LossStats,
        by_hand: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """PPO's loss plus ``c_v·`` the nested terms (:func:`nested_critic_terms`; with ``by_hand``, their
        derivatives, :func:`nested_critic_derivatives`, join PPO's)."""
        loss, values, approx_kl = super()._loss(batch, clip_range, clip_range_vf, stats, by_hand=by_hand)
        if self.policy.levels == 1:
            return loss, values, approx_kl
        distill = self.mode == "distill" and not self.outer_frozen()
        if by_hand:
            outer_networks = self._hand.networks[2:]
            outer = [self._hand.values(network, batch.observations) for network in outer_networks]
        else:
            with torch.set_grad_enabled(distill):
                outer = self.policy.outer_values(batch.observations)
        terms = nested_critic_terms([values, *outer], self.kappa)
        for level, term in enumerate(terms, start=1):
            stats[f"nested/critic_{level}/loss"].append(term.detach())
        nested = sum(terms[1:], terms[0]) if distill else terms[0]
        if by_hand:
            d_log_prob, d_entropy, d_values, _ = self._loss_derivatives
            inner, *others = nested_critic_derivatives([values, *outer], self.kappa, distill)
            self._loss_derivatives = (
                d_log_prob,
                d_entropy,
                d_values + self.vf_coef * inner,
                {
                    network.name: None if derivative is None else self.vf_coef * derivative
                    for network, derivative in zip(outer_networks, others, strict=True)
                },
            )
        return loss + self.vf_coef * nested, values, approx_kl

    def _clip_gradients(self) -> torch.Tensor:
        """Each level clipped on its own; returns the norm before clipping over every level's gradients.
        Written by hand, a level's gradients are a run of one flat tensor, clipped on that run."""
        norms = []
        for group in self.policy.optimizer.param_groups:
            flat = self._hand.flat_grad_of(group["params"]) if self._hand is not None else None
            if flat is None or any(p.grad is None for p in group["params"]):
                norms.append(clip_grad_norm(group["params"], self.max_grad_norm))
            else:
                norms.append(clip_flat_grad_norm(flat, self.max_grad_norm))
        return torch.linalg.vector_norm(torch.stack(norms))

    def _optimizer_step(self, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        super()._optimizer_step(loss, losses)
        if self.mode == "polyak" and not self.outer_frozen():
            self.policy.polyak_update(self.tau)

    def train(self) -> None:
        buffer = self.rollout_buffer
        obs = torch.as_tensor(buffer.observations.reshape(-1, *buffer.obs_shape), device=self.device)
        with torch.no_grad():
            rollout_values = [v.cpu().numpy() for v in self.policy.critic_values(obs)]
            if self._probe is None:
                self._probe = obs[:PROBE_SIZE].clone()
                self._probe_values = self.policy.critic_values(self._probe)
        super().train()
        with torch.no_grad():
            probe_values = self.policy.critic_values(self._probe)
        returns = buffer.returns.reshape(-1)
        for k, values in enumerate(rollout_values):
            tag = f"nested/critic_{k + 1}"
            self.logger.record(f"{tag}/value_mean", float(values.mean()))
            self.logger.record(f"{tag}/explained_variance", float(explained_variance(values, returns)))
            churn = (probe_values[k] - self._probe_values[k]).abs().mean().item()
            self.logger.record(f"{tag}/churn", churn)
            if k + 1 < len(rollout_values):
                self.logger.record(f"{tag}/gap", float(np.abs(values - rollout_values[k + 1]).mean()))
        self._probe_values = probe_values

    def _excluded_save_params(self) -> list[str]:
        # The probe set is re-taken from the first rollout after loading.
        return [*super()._excluded_save_params(), "_probe", "_probe_values"]


def check_nested(
    levels: int,
    kappa: float,
    lr_ratio: float,
    mode: str,
    tau: float,
    freeze_outer_after: int | None,
    outer_net_arch: list[int] | None,
) -> None:
    """A ConfigError naming the first out-of-range nested-critic setting and its valid range."""
    if levels < 1:
        raise ConfigError(f"nested.levels must be an integer >= 1 (1 = plain PPO), got {levels}")
    if kappa < 0:
        raise ConfigError(f"nested.kappa must be >= 0, got {kappa}")
    if not 0 < lr_ratio <= 1:
        raise ConfigError(f"nested.lr_ratio must be in (0, 1], got {lr_ratio}")
    if mode not in MODES:
        raise unknown_choice("nested.mode", mode, MODES)
    if not 0 < tau <= 1:
        raise ConfigError(f"nested.tau must be in (0, 1], got {tau}")
    if freeze_outer_after is not None and freeze_outer_after < 0:
        raise ConfigError(
            f"nested.freeze_outer_after must be >= 0 environment steps (null: never), "
            f"got {freeze_outer_after}"
        )
    if outer_net_arch is not None and any(width <= 0 for width in outer_net_arch):
        raise ConfigError(f"nested.critic widths must be positive integers, got {outer_net_arch}")
