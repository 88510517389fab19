"""ContinualPPO: Stable-Baselines3's PPO set up for continual reinforcement learning."""

from __future__ import annotations

import inspect
import math
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer, RolloutBufferSamples
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from nested_ac.errors import unknown_choice
from nested_ac.faults import check_gradients, check_losses, check_update
from nested_ac.hooks import PlasticityTool
from nested_ac.networks import Network, policy_networks
from nested_ac.optim import FlatAdam, shaped_views

# PPO's loss terms, as logged under train/ and checked for NaN (see nested_ac/faults.py).
LOSS_TERMS = ("policy_gradient_loss", "value_loss", "entropy_loss")
# The update's statistics by name (loss terms, clip fraction …), one detached tensor per minibatch.
LossStats = dict[str, list[torch.Tensor]]

# ``ppo.engine``: "fast" computes the same update with less framework overhead (equal to float rounding);
# "sb3" is Stable-Baselines3's PPO number for number.
ENGINES = ("fast", "sb3")

# Optimizers with a fused kernel that the fast engine switches on (other optimizers step as they are; where
# FlatAdam cannot take a step, it takes torch's fused one).
FUSED_OPTIMIZERS = (FlatAdam, torch.optim.AdamW)

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

# What ContinualActorCriticPolicy.prepare_by_hand keeps: the actor and every critic, the parameters, and
# their gradients' views of one flat tensor.
ByHand = tuple[tuple[Network, ...], list[torch.nn.Parameter], list[torch.Tensor]]

# ∂loss/∂z of an activation h = f(z), from ∂loss/∂h and h, for the activations the hand-written backward knows
# (the kernels autograd itself runs for them).
ACTIVATION_BACKWARD: dict[type[torch.nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    torch.nn.ReLU: lambda grad, output: torch.ops.aten.threshold_backward(grad, output, 0),
    torch.nn.Tanh: torch.ops.aten.tanh_backward,
}


OptimizerClass = type[torch.optim.Optimizer]


def engine_optimizer(engine: str, optimizer_class: OptimizerClass) -> OptimizerClass:
    """The class ``engine`` steps ``optimizer_class`` with: Adam as :class:`~nested_ac.optim.FlatAdam` on the
    fast engine and as ``torch.optim.Adam`` on ``sb3`` (SB3's numbers); any other optimizer as it is."""
    if optimizer_class in (torch.optim.Adam, FlatAdam):
        return FlatAdam if engine == "fast" else torch.optim.Adam
    return optimizer_class


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``g ← g·min(1, c / (‖g‖₂ + 1e-6))`` over all gradients together; returns ``‖g‖₂`` before clipping.

    The same kernels, in the same order, as ``torch.nn.utils.clip_grad_norm_`` on CPU (so the same
    numbers), without its per-call grouping of tensors by device and dtype.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:  # e.g. an outer critic moved only by Polyak steps
        return torch.tensor(0.0)
    total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, _clip_factor(total_norm, max_norm))
    return total_norm


def clip_flat_grad_norm(flat_grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """:func:`clip_grad_norm` for gradients that are all views of one flat tensor, on that tensor."""
    total_norm = torch.linalg.vector_norm(flat_grad)
    flat_grad.mul_(_clip_factor(total_norm, max_norm))
    return total_norm


def _clip_factor(total_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, c / (‖g‖₂ + 1e-6)), as ``torch.nn.utils.clip_grad_norm_`` computes it."""
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


def _hooked(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` would run a hook (the condition ``nn.Module.__call__`` checks)."""
    return bool(module._forward_hooks) or _other_hooks(module)


def _other_hooks(module: torch.nn.Module) -> bool:
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


def _observers_only(module: torch.nn.Module) -> bool:
    """Whether every hook on ``module`` is a plain forward hook marked ``observes_only`` (one that reads the
    output and never replaces it, as an :class:`~nested_ac.plasticity.ActivationRecorder`'s)."""
    return not _other_hooks(module) and all(
        getattr(hook, "observes_only", False) for hook in module._forward_hooks.values()
    )


def call(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, without ``nn.Module.__call__``'s per-call work: a ``Sequential`` (or SB3's
    ``FlattenExtractor``) runs its layers in turn, any other module its ``forward``, then its plain forward
    hooks in turn as ``__call__`` runs them (a hook's non-None result replaces the output). The same
    operations, so the same numbers; a module with any other kind of hook is called as usual."""
    if _other_hooks(module):
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
    """

    def __init__(self, *args: Any, direct: bool = False, **kwargs: Any) -> None:
        self.direct = direct
        # prepare_by_hand's networks, parameters and gradient views (None: not prepared or not applicable)
        self._by_hand: ByHand | None = None
        self._saved: tuple[Any, ...] = ()  # what the last evaluate_actions_by_hand keeps for the backward
        self._saved_outer: dict[str, list[torch.Tensor]] = {}  # and values_by_hand, by critic
        self.flat_grad = torch.zeros(0)
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "direct": self.direct}

    def _direct_kind(self) -> str | None:
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
            if _hooked(mlp):
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
        kind = self._direct_kind()
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
        kind = self._direct_kind()
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

    def prepare_by_hand(self) -> bool:
        """Whether :meth:`evaluate_actions_by_hand` and :meth:`backward_by_hand` apply now (ask before each
        update: tools add hooks): a direct distribution, the actor and every critic plain MLPs
        (:class:`~nested_ac.networks.Network`) of activations :data:`ACTIVATION_BACKWARD` knows, no
        parameters outside them but a Gaussian's ``log_std``, and no hook on the way but observers on the
        activations. The gradients are then written into one flat tensor, :attr:`flat_grad`, each
        parameter's ``.grad`` a view of it."""
        networks = self._by_hand_networks()
        if networks is None:
            self._by_hand = None
            return False
        parameters = list(self.parameters())
        kept = self._by_hand
        if kept is None or kept[0] != networks or not _same_objects(kept[1], parameters):
            self.flat_grad = torch.zeros(sum(p.numel() for p in parameters), device=self.device)
            self._by_hand = (networks, parameters, shaped_views(self.flat_grad, parameters))
        return True

    def _by_hand_networks(self) -> tuple[Network, ...] | None:
        if self._direct_kind() is None:
            return None
        try:
            networks = tuple(policy_networks(self))  # the actor, then every critic, inner first
        except ValueError:
            return None
        extractors = {self.features_extractor, self.pi_features_extractor, self.vf_features_extractor}
        mlps = (self.mlp_extractor, *(m for m in self.modules() if isinstance(m, torch.nn.Sequential)))
        layers = [layer for network in networks for layer in (*network.hidden, network.output)]
        activations = [activation for network in networks for activation in network.activations]
        covered = {id(p) for network in networks for p in network.parameters()}
        if hasattr(self, "log_std"):
            covered.add(id(self.log_std))
        if (
            any(type(activation) not in ACTIVATION_BACKWARD for activation in activations)
            or any(_hooked(module) for module in (self, *extractors, *mlps, *layers))
            or not all(_observers_only(activation) for activation in activations)
            or any(id(p) not in covered for p in self.parameters())
        ):
            return None
        return networks

    def evaluate_actions_by_hand(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`evaluate_actions` without autograd (the same operations on detached parameters), keeping
        what :meth:`backward_by_hand` needs; only where :meth:`prepare_by_hand` said yes."""
        (actor, critic, *_), _, _ = self._by_hand
        observations = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        if self.share_features_extractor:
            pi_features = vf_features = call(self.features_extractor, observations)
        else:
            pi_features = call(self.pi_features_extractor, observations)
            vf_features = call(self.vf_features_extractor, observations)
        out, actor_inputs = _mlp_forward(actor, pi_features)
        values, critic_inputs = _mlp_forward(critic, vf_features)
        if self._direct_kind() == "categorical":
            log_probs = torch.log_softmax(out, dim=-1)
            log_prob = log_probs.gather(-1, actions.long().view(-1, 1)).squeeze(-1)
            finite = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)  # 0·log 0 = 0, not NaN
            probs = log_probs.exp()
            entropy = -(probs * finite).sum(-1)
            head = (actions.long().view(-1, 1), probs, finite, entropy)
        else:
            log_std = self.log_std.detach()
            inverse_std = torch.exp(-log_std)
            z = (actions - out) * inverse_std
            log_prob = (-0.5 * z.square() - log_std - HALF_LOG_2PI).sum(-1)
            entropy = (0.5 + HALF_LOG_2PI + log_std).sum().expand(len(out))
            head = (z, inverse_std)
        self._saved = (actor_inputs, critic_inputs, head)
        return values, log_prob, entropy

    def flat_grad_of(self, parameters: Sequence[torch.nn.Parameter]) -> torch.Tensor | None:
        """The slice of :attr:`flat_grad` that holds exactly the gradients of ``parameters`` (in that
        order), or None if they are not such a run of it."""
        _, held, _ = self._by_hand
        start = next((i for i, p in enumerate(held) if p is parameters[0]), None) if parameters else None
        if start is None or not _same_objects(held[start : start + len(parameters)], parameters):
            return None
        offset = sum(p.numel() for p in held[:start])
        return self.flat_grad[offset : offset + sum(p.numel() for p in parameters)]

    def by_hand_networks(self) -> tuple[Network, ...]:
        """The actor and every critic (inner first), as :meth:`prepare_by_hand` found them."""
        return self._by_hand[0]

    def values_by_hand(self, network: Network, obs: torch.Tensor) -> torch.Tensor:
        """A critic's values V(s) on ``obs`` without autograd, keeping its layers' inputs for
        :meth:`backward_by_hand` (``outer_derivatives``); only where :meth:`prepare_by_hand` said yes."""
        features = call(
            self.vf_features_extractor,
            preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images),
        )
        values, inputs = _mlp_forward(network, features)
        self._saved_outer[network.name] = inputs
        return values.flatten()

    def backward_by_hand(
        self,
        d_log_prob: torch.Tensor,
        d_entropy: torch.Tensor,
        d_values: torch.Tensor,
        outer_derivatives: dict[str, torch.Tensor | None] | None = None,
    ) -> None:
        """Write ∂loss/∂θ into every parameter's ``.grad`` (views of :attr:`flat_grad`), given the loss's
        partial derivatives per sample with respect to the last :meth:`evaluate_actions_by_hand`'s
        log-probabilities, entropies and values, and (``outer_derivatives``, by network name) to the values
        of each further critic from :meth:`values_by_hand` — None for a critic that gets no gradient (its
        ``.grad`` is None, as autograd leaves it). The chain rule written out:

            categorical:  ∂loss/∂z = g_logπ (onehot(a) − π) − g_H π (log π + H)             (z: the logits)
            Gaussian:     ∂loss/∂μ = g_logπ (a − μ)/σ²,   ∂loss/∂log σ = Σ_n [g_logπ ((a − μ)²/σ² − 1) + g_H]

        then back through each MLP, layer by layer (∂W = δᵀx, ∂b = Σ δ, δ_in = f'(z) ⊙ δ W).
        """
        (actor, critic, *outer), parameters, views = self._by_hand
        for parameter, view in zip(parameters, views, strict=True):
            if parameter.grad is not view:  # e.g. set to None by zero_grad()
                parameter.grad = view
        for network in outer:
            derivative = (outer_derivatives or {}).get(network.name)
            if derivative is None:
                for parameter in network.parameters():
                    parameter.grad = None
            else:
                _mlp_backward(network, self._saved_outer[network.name], derivative.unsqueeze(-1))
        actor_inputs, critic_inputs, head = self._saved
        d_log_prob = d_log_prob.unsqueeze(-1)
        if self._direct_kind() == "categorical":
            actions, probs, finite, entropy = head
            d_out = (finite + entropy.unsqueeze(-1)).mul_(probs).mul_(-d_entropy.unsqueeze(-1))
            d_out.addcmul_(probs, d_log_prob, value=-1).scatter_add_(-1, actions, d_log_prob)
        else:
            z, inverse_std = head
            d_out = z * inverse_std * d_log_prob
            torch.sum((z.square() - 1).mul_(d_log_prob), 0, out=self.log_std.grad).add_(d_entropy.sum())
        _mlp_backward(actor, actor_inputs, d_out)
        _mlp_backward(critic, critic_inputs, d_values.unsqueeze(-1))


def _same_objects(these: Sequence[object], those: Sequence[object]) -> bool:
    return len(these) == len(those) and all(map(operator.is_, these, those))


def _mlp_forward(network: Network, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The network's output on ``x`` computed from detached parameters (no graph), and each layer's input.
    Activations run through :func:`call`, so their observers see the outputs as on the autograd path."""
    inputs = []
    for linear, activation in zip(network.hidden, network.activations, strict=True):
        inputs.append(x)
        x = call(activation, torch.nn.functional.linear(x, linear.weight.detach(), linear.bias.detach()))
    inputs.append(x)
    output = network.output
    return torch.nn.functional.linear(x, output.weight.detach(), output.bias.detach()), inputs


def _mlp_backward(network: Network, inputs: list[torch.Tensor], d_out: torch.Tensor) -> None:
    """Write ∂loss/∂θ into the ``.grad`` of every layer of ``network`` from ∂loss/∂output and the inputs
    of its layers (see :func:`_mlp_forward`)."""
    layers = (*network.hidden, network.output)
    for index in range(len(layers) - 1, -1, -1):
        layer, x = layers[index], inputs[index]
        torch.mm(d_out.t(), x, out=layer.weight.grad)
        torch.sum(d_out, 0, out=layer.bias.grad)
        if index:
            backward = ACTIVATION_BACKWARD[type(network.activations[index - 1])]
            d_out = backward(d_out.mm(layer.weight.detach()), x)


class ContinualPPO(PPO):
    """Proximal Policy Optimization (Schulman et al., 2017) for continual RL, on Stable-Baselines3.

    Maximises the clipped surrogate ``E[min(r_t(θ) Â_t, clip(r_t(θ), 1-ε, 1+ε) Â_t)]`` with
    ``r_t(θ) = π_θ(a_t|s_t) / π_θ_old(a_t|s_t)`` and GAE(λ) advantages, plus ``c_v · (V(s) - R̂)²`` and an
    entropy bonus — SB3's PPO unchanged. What it adds is the continual-learning default network
    (separate actor and critic MLPs, 64×64 ReLU, as in the loss-of-plasticity literature) and the hooks of
    :class:`~nested_ac.hooks.PlasticityTool`: each tool in ``plasticity_tools`` runs on the clipped gradients
    before every optimizer step, after every optimizer step, at every task switch, after every rollout,
    and logs after every update; :meth:`trainable_networks` tells tools which networks they may change.
    A NaN or inf in a loss, a gradient or a parameter stops the update with
    :class:`~nested_ac.faults.NumericalFault`. Like SB3's algorithms it takes plain keyword arguments
    (``nested_ac.build`` translates a run configuration into them).

    ``engine="sb3"`` is SB3's PPO number for number. ``engine="fast"`` (the default) computes the same
    update with less overhead: the policy's log-density and entropy by formula
    (:class:`ContinualActorCriticPolicy`, in the rollout and the update); the gradient written by hand
    where :meth:`_by_hand_applies` — ``_loss(by_hand=True)`` gives the loss's derivatives with respect to
    log π, H and V per sample and the policy takes them back through its networks
    (:meth:`ContinualActorCriticPolicy.backward_by_hand`) into one flat gradient tensor, clipped on that
    tensor; and torch's Adam stepped on flat tensors (:class:`~nested_ac.optim.FlatAdam`) or its fused
    AdamW kernel. The two agree to float rounding. Both engines share the rest: minibatches indexed from
    tensors made once per update (SB3's permutation and values), loss statistics kept as tensors and read
    once per update, and foreach gradient clipping.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **PPO.policy_aliases,
        "MlpPolicy": ContinualActorCriticPolicy,
    }

    def __init__(
        self,
        policy: Any,
        env: Any,
        plasticity_tools: Sequence[PlasticityTool] = (),
        engine: str = "fast",
        **kwargs: Any,
    ) -> None:
        if engine not in ENGINES:
            raise unknown_choice("ppo.engine", engine, ENGINES)
        self.engine = engine
        policy_kwargs = kwargs.pop("policy_kwargs", None) or {
            "net_arch": {"pi": [64, 64], "vf": [64, 64]},
            "activation_fn": torch.nn.ReLU,
        }
        policy_class = self._get_policy_from_name(policy) if isinstance(policy, str) else policy
        if issubclass(policy_class, ContinualActorCriticPolicy):
            policy_kwargs = {**policy_kwargs, "direct": engine == "fast"}
        self.plasticity_tools = list(plasticity_tools)
        self._grad_norms: list[torch.Tensor] = []
        self._networks: tuple[BasePolicy, dict[str, Network]] | None = None  # see trainable_networks
        self._by_hand = False  # see _by_hand_applies
        self._loss_derivatives: tuple[Any, ...] = ()  # see _loss(by_hand=True)
        super().__init__(policy, env, policy_kwargs=policy_kwargs, **kwargs)

    def _setup_model(self) -> None:
        kwargs = self.policy_kwargs
        optimizer_class = engine_optimizer(self.engine, kwargs.get("optimizer_class", torch.optim.Adam))
        if optimizer_class is FlatAdam and kwargs.get("optimizer_kwargs") is None:
            kwargs = {**kwargs, "optimizer_kwargs": {"eps": 1e-5}}  # what SB3 gives its Adam by default
        self.policy_kwargs = {**kwargs, "optimizer_class": optimizer_class}
        super()._setup_model()
        optimizer = self.policy.optimizer
        if self.engine == "fast" and type(optimizer) in FUSED_OPTIMIZERS:
            for group in optimizer.param_groups:
                group["fused"], group["foreach"] = True, False
        optimizer.register_step_post_hook(self._after_optimizer_step)

    def trainable_networks(self) -> dict[str, Network]:
        """The networks plasticity tools may change now, by name: the actor and the critic
        (:func:`~nested_ac.networks.policy_networks`); parameters outside them, such as a Gaussian policy's
        ``log_std``, are not part of any. Worked out once per policy object (tools ask after every step)."""
        cached = self._networks
        if cached is None or cached[0] is not self.policy:
            cached = self._networks = (
                self.policy,
                {network.name: network for network in policy_networks(self.policy)},
            )
        return dict(cached[1])

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

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        collect = (
            self._collect_rollouts if self.engine == "fast" and not self.use_sde else super().collect_rollouts
        )
        collected = collect(env, callback, rollout_buffer, n_rollout_steps)
        for tool in self.plasticity_tools:
            tool.on_rollout_end(self)
        return collected

    def _collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's ``collect_rollouts`` (without gSDE), step for step and number for number, with less work
        per step: the policy runs under ``torch.inference_mode`` and through :func:`call`, and only the
        copies that finished are searched for a time limit to bootstrap (``r ← r + γ V(s_T)``)."""
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        while n_steps < n_rollout_steps:
            with torch.inference_mode():
                actions, values, log_probs = call(self.policy, obs_as_tensor(self._last_obs, self.device))
            actions = actions.cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                if self.policy.squash_output:
                    clipped_actions = self.policy.unscale_action(clipped_actions)
                else:
                    clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            for idx in np.flatnonzero(dones):
                info = infos[idx]
                if info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                    terminal_obs = self.policy.obs_to_tensor(info["terminal_observation"])[0]
                    with torch.no_grad():
                        terminal_value = self.policy.predict_values(terminal_obs)[0]
                    rewards[idx] += self.gamma * terminal_value
            rollout_buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)
            self._last_obs = new_obs
            self._last_episode_starts = dones
        with torch.inference_mode():
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def train(self) -> None:
        self._update()
        check_update(self)
        for tool in self.plasticity_tools:
            tool.log(self.logger)

    def _minibatches(self) -> Iterator[Iterator[RolloutBufferSamples]]:
        """Per epoch, the rollout buffer's minibatches as ``RolloutBuffer.get(batch_size)`` yields them (the
        same permutation, drawn from numpy's global generator, and the same values), but sliced from
        tensors made once per update and shuffled once per epoch. Other buffers use their own ``get``."""
        buffer = self.rollout_buffer
        if type(buffer) is not RolloutBuffer:
            for _ in range(self.n_epochs):
                yield buffer.get(self.batch_size)
            return

        def flat(array: np.ndarray) -> torch.Tensor:  # (steps, envs, ...) -> (envs·steps, ...), as SB3
            return torch.as_tensor(array.swapaxes(0, 1).reshape(-1, *array.shape[2:]), device=self.device)

        data = [
            flat(buffer.observations),
            flat(buffer.actions.astype(np.float32, copy=False)),
            *(flat(array).flatten() for array in (buffer.values, buffer.log_probs)),
            *(flat(array).flatten() for array in (buffer.advantages, buffer.returns)),
        ]
        size = len(data[0])
        for _ in range(self.n_epochs):
            order = torch.as_tensor(np.random.permutation(size), device=self.device)
            shuffled = [tensor[order] for tensor in data]
            yield (
                RolloutBufferSamples(*(tensor[start : start + self.batch_size] for tensor in shuffled))
                for start in range(0, size, self.batch_size)
            )

    def _update(self) -> None:
        """One PPO update on the rollout buffer: SB3's ``PPO.train``, step for step.

        It is written out as a loop over :meth:`_loss` (the minibatch loss) and :meth:`_optimizer_step` so
        that subclasses add terms to the loss or work after each step without a second copy of PPO. Loss
        statistics stay tensors until the end of the update (one read, not one per minibatch).
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        progress = self._current_progress_remaining
        clip_range = self.clip_range(progress)
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(progress)
        stats: LossStats = defaultdict(list)
        self._grad_norms.clear()
        self._by_hand = self._by_hand_applies()
        by_hand = {"by_hand": True} if self._by_hand else {}  # a subclass's _loss may not take it
        continue_training = True
        for epoch, minibatches in enumerate(self._minibatches()):
            approx_kl_divs = []
            for batch in minibatches:
                loss, _, approx_kl_div = self._loss(batch, clip_range, clip_range_vf, stats, **by_hand)
                approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and (kl := approx_kl_div.item()) > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {kl:.2f}")
                    break
                self._optimizer_step(loss, {name: values[-1] for name, values in stats.items()})
            self._n_updates += 1
            if not continue_training:
                break

        means = {name: float(np.mean(torch.stack(values).tolist())) for name, values in stats.items()}
        check_losses(means, self.num_timesteps)  # a NaN loss term that left the gradient finite
        for name, mean in means.items():
            self.logger.record(name if "/" in name else f"train/{name}", mean)
        buffer = self.rollout_buffer
        self.logger.record("train/approx_kl", np.mean(torch.stack(approx_kl_divs).tolist()))
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
        stats: LossStats,
        by_hand: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """PPO's minibatch loss ``-L_clip + c_e·L_entropy + c_v·E[(V(s) - R̂)²]``, computed as SB3 does.

        Returns the loss, the critic's predictions ``V(s)`` on the minibatch (with their graph) and the
        approximate KL divergence; appends the loss terms (detached tensors) to ``stats``. ``by_hand``
        (the update's own call, where :meth:`_by_hand_applies`): no graph; instead the loss's derivatives
        per sample with respect to log π, H and V are kept for the policy's ``backward_by_hand``.
        """
        actions = batch.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = batch.actions.long().flatten()
        evaluate = self.policy.evaluate_actions_by_hand if by_hand else self.policy.evaluate_actions
        values, log_prob, entropy = evaluate(batch.observations, actions)
        values = values.flatten()
        advantages = batch.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        log_ratio = log_prob - batch.old_log_prob
        ratio = torch.exp(log_ratio)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()

        values_pred = values
        if clip_range_vf is not None:
            values_pred = batch.old_values + torch.clamp(
                values - batch.old_values, -clip_range_vf, clip_range_vf
            )
        value_loss = torch.nn.functional.mse_loss(batch.returns, values_pred)

        entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

        with torch.no_grad():
            for name, value in zip(LOSS_TERMS, (policy_loss, value_loss, entropy_loss), strict=True):
                stats[name].append(value.detach())
            stats["clip_fraction"].append(torch.mean((torch.abs(ratio - 1) > clip_range).float()))
            approx_kl_div = torch.mean((ratio - 1) - log_ratio)  # ratio = exp(log_ratio), as SB3 computes it
            if by_hand:
                n = len(values)
                unclipped = policy_loss_1 <= policy_loss_2  # where min() takes Â r (its ∂/∂log π: Â r)
                in_range = 1.0
                if clip_range_vf is not None:
                    in_range = (values - batch.old_values).abs() <= clip_range_vf
                self._loss_derivatives = (  # ∂loss/∂log π, ∂loss/∂H, ∂loss/∂V, and further critics' (none)
                    unclipped * policy_loss_1 * (-1 / n),
                    torch.full_like(values, -self.ent_coef / n),
                    (values_pred - batch.returns) * in_range * (2 * self.vf_coef / n),
                    {},
                )
        return loss, values, approx_kl_div

    def _optimizer_step(self, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        """Back-propagate ``loss``, clip the gradient norm to ``max_grad_norm`` and step the optimizer.

        Between clipping and ``optimizer.step()`` is the one place where the gradient is final: the fault
        check runs there (``losses``, this minibatch's loss terms, name a non-finite loss first).
        """
        if self._by_hand:
            self.policy.backward_by_hand(*self._loss_derivatives)
        else:
            self.policy.optimizer.zero_grad()
            loss.backward()
        total_norm = self._clip_gradients()
        check_gradients(self, total_norm, losses)
        self._grad_norms.append(total_norm)
        self._before_optimizer_step()
        self.policy.optimizer.step()

    def _by_hand_applies(self) -> bool:
        """Whether this update's gradients are written by hand
        (:meth:`ContinualActorCriticPolicy.backward_by_hand`) rather than by autograd: on the fast engine, for
        a :meth:`_loss` that takes ``by_hand`` (a subclass whose loss does not takes autograd), on a policy
        that can."""
        policy = self.policy
        optimized = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
        return (
            self.engine == "fast"
            and "by_hand" in inspect.signature(self._loss).parameters
            and isinstance(policy, ContinualActorCriticPolicy)
            and optimized == {id(p) for p in policy.parameters()}
            and policy.prepare_by_hand()
        )

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the gradient norm to ``max_grad_norm``; returns the norm before clipping (no sync).

        The optimizer holds every policy parameter in ``policy.parameters()``'s order (SB3 builds it so)."""
        if self._by_hand:  # every gradient is a view of one flat tensor
            return clip_flat_grad_norm(self.policy.flat_grad, self.max_grad_norm)
        groups = self.policy.optimizer.param_groups
        return clip_grad_norm([p for group in groups for p in group["params"]], self.max_grad_norm)

    def _excluded_save_params(self) -> list[str]:
        # Tools hold references into the policy; their own state goes through state_dict().
        return [
            *super()._excluded_save_params(),
            "plasticity_tools",
            "_grad_norms",
            "_networks",
            "_loss_derivatives",
        ]
