"""The actor-critic policy of nested-ac's agents, and module calls without ``nn.Module.__call__``'s overhead.

:class:`ContinualActorCriticPolicy` is SB3's ``ActorCriticPolicy``, its action distribution evaluated by
formula on the fast engine; :func:`call` runs a module as ``module(x)`` does, hooks included, with less
per-call work (the fast engine's rollouts and forward passes).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import Schedule as LearningRateSchedule

from nested_ac.errors import unknown_choice
from nested_ac.layers import hidden_layers, output_features, width_multiplier
from nested_ac.networks import INITIALISATIONS, lecun_uniform_

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def hooked(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` would run a hook (the condition ``nn.Module.__call__`` checks)."""
    return bool(module._forward_hooks) or other_hooks(module)


def other_hooks(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` would run a hook other than its own plain forward hooks (those an
    :class:`~nested_ac.plasticity.ActivationRecorder` registers), or is traced."""
    hooks = torch.nn.modules.module
    return bool(
        module._forward_hooks_with_kwargs
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
        or hooks._global_backward_hooks
        or hooks._global_backward_pre_hooks
        or torch._C._get_tracing_state()
    )


def observers_only(module: torch.nn.Module) -> bool:
    """Whether every hook on ``module`` is a plain forward hook marked ``observes_only`` (one that reads the
    output and never replaces it, as an :class:`~nested_ac.plasticity.ActivationRecorder`'s)."""
    return not other_hooks(module) and all(
        getattr(hook, "observes_only", False) for hook in module._forward_hooks.values()
    )


def call(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, without ``nn.Module.__call__``'s per-call work: a ``Sequential`` (or SB3's
    ``FlattenExtractor``) runs its layers in turn, any other module its ``forward``, then its plain forward
    hooks in turn as ``__call__`` runs them (a hook's non-None result replaces the output). The same
    operations, so the same numbers; a module with any other kind of hook is called as usual."""
    if other_hooks(module):
        return module(x)
    if type(module) is torch.nn.Sequential:
        output = x
        for layer in module:
            output = call(layer, output)
    elif type(module) is FlattenExtractor:
        output = call(module.flatten, x)
    else:
        output = module.forward(x)
    if module._forward_hooks:
        for hook in module._forward_hooks.values():
            result = hook(module, (x,), output)
            if result is not None:
                output = result
    return output


class ContinualActorCriticPolicy(ActorCriticPolicy):
    """SB3's ``ActorCriticPolicy``; with ``direct=True`` its categorical or diagonal-Gaussian action
    distribution is evaluated by formula instead of through ``torch.distributions`` objects:

        categorical:  log π(a|s) = log_softmax(z)_a,   H = -Σ_a π(a|s) log π(a|s)   (z: the logits)
        Gaussian:     log π(a|s) = Σ_i [-(a_i - μ_i)² / (2σ_i²) - log σ_i - ½ log 2π],
                      H = Σ_i (½ + ½ log 2π + log σ_i)

    The same numbers to float rounding at a fraction of the per-call overhead; sampling draws from the
    same random stream as SB3 (``torch.multinomial`` / ``torch.normal``). Any other distribution (and
    ``direct=False``) takes SB3's path unchanged.

    ``init``: ``orthogonal`` (SB3's initialisation, with ``ortho_init``) or ``lecun_uniform`` (every Linear
    layer, heads included, W ~ U(±√(3/fan_in)) and b = 0, after SB3 has built the networks:
    :func:`~nested_ac.networks.lecun_uniform_`); the log-std starts at SB3's ``log_std_init`` (0) either way.

    ``layer_norm`` (a LayerNorm between each hidden Linear and its activation) or an activation with several
    outputs per unit (CReLU, Fourier features): the actor's and the critic's MLPs are built by
    :func:`~nested_ac.layers.hidden_layers` inside SB3's ``MlpExtractor`` (its ``policy_net`` and
    ``value_net`` replaced, its latent sizes those of the new MLPs), so the heads read m·n features;
    LayerNorm starts at γ = 1, β = 0 under either initialisation. Otherwise SB3 builds them, as before.
    """

    def __init__(
        self,
        *args: Any,
        direct: bool = False,
        init: str = "orthogonal",
        layer_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        if init not in INITIALISATIONS:
            raise unknown_choice("network.init", init, INITIALISATIONS)
        self.direct = direct
        self.init = init
        self.layer_norm = layer_norm
        if init == "lecun_uniform":
            kwargs["ortho_init"] = False
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        if not self.layer_norm and width_multiplier(self.activation_fn) == 1:
            super()._build_mlp_extractor()
            return
        arch = self.net_arch
        pi, vf = (arch.get("pi", []), arch.get("vf", [])) if isinstance(arch, dict) else (arch, arch)
        extractor = MlpExtractor(self.features_dim, [], self.activation_fn, self.device)
        extractor.policy_net = self.build_hidden(pi).to(self.device)
        extractor.value_net = self.build_hidden(vf).to(self.device)
        extractor.latent_dim_pi = output_features(self.features_dim, pi, self.activation_fn)
        extractor.latent_dim_vf = output_features(self.features_dim, vf, self.activation_fn)
        self.mlp_extractor = extractor

    def build_hidden(self, widths: list[int]) -> torch.nn.Sequential:
        """Hidden layers of ``widths`` on this policy's features, with its activation and LayerNorm setting
        (:func:`~nested_ac.layers.hidden_layers`)."""
        return hidden_layers(self.features_dim, widths, self.activation_fn, self.layer_norm)

    def _build(self, lr_schedule: LearningRateSchedule) -> None:
        super()._build(lr_schedule)
        if self.init == "lecun_uniform":
            for module in (self.mlp_extractor, self.action_net, self.value_net):
                module.apply(lecun_uniform_)

    def initialise(self, module: torch.nn.Module, gain: float) -> None:
        """Initialise the Linear layers of ``module`` (a network built after SB3's) as this policy's own:
        LeCun-uniform, or SB3's orthogonal initialisation with ``gain`` where ``ortho_init`` is on."""
        if self.init == "lecun_uniform":
            module.apply(lecun_uniform_)
        elif self.ortho_init:
            module.apply(partial(self.init_weights, gain=gain))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            **super()._get_constructor_parameters(),
            "direct": self.direct,
            "init": self.init,
            "layer_norm": self.layer_norm,
        }

    def direct_kind(self) -> str | None:
        """Which direct formula applies ("categorical" or "gaussian"); None: SB3's path."""
        if not self.direct:
            return None
        return {CategoricalDistribution: "categorical", DiagGaussianDistribution: "gaussian"}.get(
            type(self.action_dist)
        )

    def _latents(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's and the critic's last hidden layers on ``obs`` (SB3's modules, run by :func:`call`)."""
        mlp = self.mlp_extractor
        observations = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        if self.share_features_extractor:
            if hooked(mlp):
                return mlp(call(self.features_extractor, observations))
            pi_features = vf_features = call(self.features_extractor, observations)
        else:
            pi_features = call(self.pi_features_extractor, observations)
            vf_features = call(self.vf_features_extractor, observations)
        return call(mlp.policy_net, pi_features), call(mlp.value_net, vf_features)

    def _head(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The action head's output (logits or Gaussian mean) and the critic's latent features."""
        latent_pi, latent_vf = self._latents(obs)
        return call(self.action_net, latent_pi), latent_vf

    def _gaussian_log_prob(self, actions: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        z = (actions - mean) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - HALF_LOG_2PI).sum(-1)

    def forward(
        self, obs: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kind = self.direct_kind()
        if kind is None:
            return super().forward(obs, deterministic)
        out, latent_vf = self._head(obs)
        if kind == "categorical":
            log_probs = torch.log_softmax(out, dim=-1)
            if deterministic:
                actions = out.argmax(dim=-1)
            else:
                actions = torch.multinomial(log_probs.exp(), 1, True).squeeze(-1)
            log_prob = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        else:
            actions = out if deterministic else torch.normal(out, torch.exp(self.log_std).expand_as(out))
            log_prob = self._gaussian_log_prob(actions, out)
        return actions.reshape((-1, *self.action_space.shape)), call(self.value_net, latent_vf), log_prob

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        kind = self.direct_kind()
        if kind is None:
            return super().evaluate_actions(obs, actions)
        out, latent_vf = self._head(obs)
        if kind == "categorical":
            log_probs = torch.log_softmax(out, dim=-1)
            log_prob = log_probs.gather(-1, actions.long().view(-1, 1)).squeeze(-1)
            finite = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)  # 0·log 0 = 0, not NaN
            entropy = -(log_probs.exp() * finite).sum(-1)
        else:
            log_prob = self._gaussian_log_prob(actions, out)
            entropy = (0.5 + HALF_LOG_2PI + self.log_std).sum().expand(len(out))
        return call(self.value_net, latent_vf), log_prob, entropy
