"""The fast engine's hand-written gradient: where it applies (:func:`refusal`) and how it is computed
(:class:`HandGradient`).

On ``ppo.engine: fast`` :class:`~nested_ac.agents.ppo.ContinualPPO` writes PPO's gradient by hand instead of
through autograd: the loss gives its derivatives per sample with respect to log π, the entropy H and the
values V, and :class:`HandGradient` takes them back through the networks into one flat gradient tensor.
That is only right where the hand-written chain rule is exactly autograd's, so :func:`refusal` — the one
place that decides — names the first rule a model breaks, and every update that breaks one takes autograd:

- the fast engine, and a ``_loss`` that takes ``by_hand`` (a subclass's loss that does not takes autograd);
- no injected head (:class:`~nested_ac.structural.InjectedHead`, plasticity injection's sum of heads);
- a :class:`~nested_ac.agents.policy.ContinualActorCriticPolicy` with its own ``evaluate_actions`` and a
  distribution evaluated by formula (categorical or diagonal Gaussian);
- an optimizer that holds exactly the policy's parameters, every one of which requires a gradient, carries
  no gradient hook (``Tensor.register_hook``, ``register_post_accumulate_grad_hook``) and shares one dtype
  and device with the others;
- the actor and every critic plain MLPs (:func:`~nested_ac.networks.policy_networks`): every layer exactly
  ``torch.nn.Linear`` with a bias (not a subclass, not parametrized), every LayerNorm between a Linear and
  its activation exactly ``torch.nn.LayerNorm`` over that layer's units with a gain and a bias, every
  activation one of :data:`ACTIVATION_BACKWARD`, inside SB3's ``MlpExtractor`` and plain ``nn.Sequential``
  containers; no parametrization anywhere in the policy;
- no module hook anywhere in the policy (nor a global one, nor tracing) but observers on the activations
  (forward hooks marked ``observes_only``, which read the output and never replace it);
- no parameter outside the actor and the critics but a Gaussian's ``log_std``, and none in two networks.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import nn

from nested_ac.agents.policy import (
    HALF_LOG_2PI,
    ContinualActorCriticPolicy,
    call,
    hooked,
    observers_only,
    other_hooks,
)
from nested_ac.layers import CReLU, Fourier
from nested_ac.networks import Network, policy_networks
from nested_ac.optim import shaped_views
from nested_ac.structural import InjectedHead

if TYPE_CHECKING:
    from nested_ac.agents.ppo import ContinualPPO


def _crelu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """h = relu([z, −z]): ∂loss/∂z = g_1 − g_2, (g_1, g_2) = relu'·∂loss/∂h split in halves."""
    first, second = torch.ops.aten.threshold_backward(grad, output, 0).chunk(2, -1)
    return first - second


def _fourier_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """h = [sin z, cos z]: ∂loss/∂z = ∂loss/∂sin · cos z − ∂loss/∂cos · sin z."""
    grad_sin, grad_cos = grad.chunk(2, -1)
    sin, cos = output.chunk(2, -1)
    return grad_sin * cos - grad_cos * sin


# ∂loss/∂z of an activation h = f(z), from ∂loss/∂h and h, for the activations the hand-written backward knows
# (the kernels autograd itself runs for them).
ACTIVATION_BACKWARD: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: lambda grad, output: torch.ops.aten.threshold_backward(grad, output, 0),
    nn.Tanh: torch.ops.aten.tanh_backward,
    CReLU: _crelu_backward,
    Fourier: _fourier_backward,
}


def refusal(model: ContinualPPO) -> str | None:
    """Why ``model``'s next update may not have its gradient written by hand (the first rule of the module
    docstring it breaks), or None where the hand-written gradient is exactly autograd's. Asked once per
    update (tools and users may add hooks at any time); a few hundred microseconds."""
    if model.engine != "fast":
        return f"ppo.engine is {model.engine!r} (Stable-Baselines3's update, number for number)"
    if not _loss_takes_by_hand(type(model)):
        return f"{type(model).__name__}._loss takes no by_hand argument"
    policy = model.policy
    if not isinstance(policy, ContinualActorCriticPolicy):
        return f"the policy is a {type(policy).__name__}, not a ContinualActorCriticPolicy"
    if type(policy).evaluate_actions is not ContinualActorCriticPolicy.evaluate_actions:
        return f"{type(policy).__name__} has its own evaluate_actions"
    if policy.direct_kind() is None:
        return f"the action distribution {type(policy.action_dist).__name__} is not evaluated by formula"
    injected = next((name for name, m in policy.named_modules() if isinstance(m, InjectedHead)), None)
    if injected is not None:
        return f"module {injected} is an injected head (plasticity injection; written by hand: Linear heads)"
    return _parameter_refusal(model) or _network_refusal(policy)


@functools.cache
def _loss_takes_by_hand(cls: type) -> bool:
    return "by_hand" in inspect.signature(cls._loss).parameters


def _parameter_refusal(model: ContinualPPO) -> str | None:
    parameters = dict(model.policy.named_parameters())
    optimized = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    if optimized != {id(p) for p in parameters.values()}:
        return "the optimizer does not hold exactly the policy's parameters"
    for name, parameter in parameters.items():
        if not parameter.requires_grad:
            return f"parameter {name} does not require a gradient"
        if parameter._backward_hooks or getattr(parameter, "_post_accumulate_grad_hooks", None):
            return f"parameter {name} has a gradient hook"
    if len({(p.dtype, p.device) for p in parameters.values()}) > 1:
        return "the parameters differ in dtype or device"
    return None


def _network_refusal(policy: ContinualActorCriticPolicy) -> str | None:
    modules = dict(policy.named_modules())
    name_of = {id(module): name for name, module in modules.items()}
    for name, module in modules.items():
        if "parametrizations" in module._modules:  # what torch.nn.utils.parametrize registers
            return f"module {name} is parametrized"
    try:
        networks = policy_networks(policy)
    except ValueError as error:
        return f"a network is not an MLP of Linear and activation layers ({error})"
    if type(policy.mlp_extractor) is not MlpExtractor:
        return f"the MLP extractor is a {type(policy.mlp_extractor).__name__}, not exactly SB3's MlpExtractor"
    containers = [policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net]
    containers += [mlp for mlp, _ in getattr(policy, "critics", list)()]
    for container in containers:
        if type(container) is not nn.Sequential:
            kind = type(container).__name__
            return f"module {name_of[id(container)]} is a {kind}, not exactly torch.nn.Sequential"
    owner: dict[int, str] = {}  # parameter id -> the network it belongs to
    activations = set()
    for network in networks:
        for layer in (*network.hidden, network.output):
            if type(layer) is not nn.Linear:
                kind = type(layer).__name__
                return f"layer {name_of[id(layer)]} is a {kind}, not exactly torch.nn.Linear"
            if layer.bias is None:
                return f"layer {name_of[id(layer)]} has no bias"
        for layer, norm in zip(network.hidden, network.norms, strict=True):
            if norm is None:
                continue
            if type(norm) is not nn.LayerNorm or norm.weight is None or norm.bias is None:
                return f"module {name_of[id(norm)]} is not exactly torch.nn.LayerNorm with a gain and a bias"
            if tuple(norm.normalized_shape) != (layer.out_features,):
                return f"module {name_of[id(norm)]} does not normalise over its layer's units"
        for parameter in network.parameters():  # every Linear's weight and bias, every LayerNorm's γ and β
            if id(parameter) in owner:
                return f"a parameter of the {network.name} is also in the {owner[id(parameter)]}"
            owner[id(parameter)] = network.name
        for activation in network.activations:
            if type(activation) not in ACTIVATION_BACKWARD:
                known = ", ".join(cls.__name__ for cls in ACTIVATION_BACKWARD)
                kind = type(activation).__name__
                return f"activation {name_of[id(activation)]} is a {kind} (written by hand: {known})"
            activations.add(id(activation))
    for name, module in modules.items():
        if not (observers_only(module) if id(module) in activations else not hooked(module)):
            return f"module {name or 'policy'} {_hook_kind(module, id(module) in activations)}"
    if hasattr(policy, "log_std"):
        owner[id(policy.log_std)] = "policy"
    for name, parameter in policy.named_parameters():
        if id(parameter) not in owner:
            return f"parameter {name} is outside the actor and the critics"
    return None


# What a hidden layer's LayerNorm keeps for its backward: its input z, and the mean and 1/σ per sample.
Normalised = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
# Each layer's input, and each hidden layer's LayerNorm trace (None where it has none).
Trace = tuple[list[torch.Tensor], list[Normalised]]


def _hook_kind(module: nn.Module, activation: bool) -> str:
    """What a hooked module has that the hand-written gradient cannot honour, as the run's log says it."""
    if other_hooks(module):
        return "has a hook other than a plain forward hook (or a global module hook or tracing is on)"
    if activation:
        return (
            "has a forward hook not marked observes_only (it may replace the output, which the hand-written "
            "backward would not see; an observer that never does sets hook.observes_only = True)"
        )
    return "has a forward hook (observers are honoured on activations only)"


class HandGradient:
    """PPO's gradient written by hand for one policy, where :func:`refusal` says it applies.

    :meth:`evaluate_actions` (and :meth:`values`, for further critics) compute the policy's
    ``evaluate_actions`` without autograd — the same operations on detached parameters — keeping what
    :meth:`backward` needs; :meth:`backward` writes ∂loss/∂θ into every parameter's ``.grad``, each a view
    of one flat tensor, :attr:`flat_grad`. ``networks``: the actor, then every critic, inner first.
    """

    def __init__(self, policy: ContinualActorCriticPolicy) -> None:
        self.policy = policy
        self.networks = tuple(policy_networks(policy))
        self.parameters = list(policy.parameters())
        first = self.parameters[0]
        self.flat_grad = torch.zeros(
            sum(p.numel() for p in self.parameters), dtype=first.dtype, device=first.device
        )
        self.views = shaped_views(self.flat_grad, self.parameters)
        self._saved: tuple[object, ...] = ()  # what the last evaluate_actions keeps for the backward
        self._saved_outer: dict[str, Trace] = {}  # and values, by critic

    def holds(self, policy: ContinualActorCriticPolicy) -> bool:
        """True while ``policy`` is the one laid out here, with the same networks and parameters."""
        return (
            policy is self.policy
            and tuple(policy_networks(policy)) == self.networks
            and _same_objects(list(policy.parameters()), self.parameters)
        )

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The policy's ``evaluate_actions`` (values, log-probabilities, entropies) without a graph."""
        policy = self.policy
        actor, critic, *_ = self.networks
        observations = preprocess_obs(obs, policy.observation_space, normalize_images=policy.normalize_images)
        if policy.share_features_extractor:
            pi_features = vf_features = call(policy.features_extractor, observations)
        else:
            pi_features = call(policy.pi_features_extractor, observations)
            vf_features = call(policy.vf_features_extractor, observations)
        out, actor_trace = _mlp_forward(actor, pi_features)
        values, critic_trace = _mlp_forward(critic, vf_features)
        if policy.direct_kind() == "categorical":
            log_probs = torch.log_softmax(out, dim=-1)
            log_prob = log_probs.gather(-1, actions.long().view(-1, 1)).squeeze(-1)
            finite = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)  # 0·log 0 = 0, not NaN
            probs = log_probs.exp()
            entropy = -(probs * finite).sum(-1)
            head = (actions.long().view(-1, 1), probs, finite, entropy)
        else:
            log_std = policy.log_std.detach()
            inverse_std = torch.exp(-log_std)
            z = (actions - out) * inverse_std
            log_prob = (-0.5 * z.square() - log_std - HALF_LOG_2PI).sum(-1)
            entropy = (0.5 + HALF_LOG_2PI + log_std).sum().expand(len(out))
            head = (z, inverse_std)
        self._saved = (actor_trace, critic_trace, head)
        return values, log_prob, entropy

    def values(self, network: Network, obs: torch.Tensor) -> torch.Tensor:
        """A further critic's values V(s) on ``obs`` without a graph, keeping its layers' inputs for
        :meth:`backward` (``outer_derivatives``)."""
        policy = self.policy
        features = call(
            policy.vf_features_extractor,
            preprocess_obs(obs, policy.observation_space, normalize_images=policy.normalize_images),
        )
        values, trace = _mlp_forward(network, features)
        self._saved_outer[network.name] = trace
        return values.flatten()

    def flat_grad_of(self, parameters: Sequence[nn.Parameter]) -> torch.Tensor | None:
        """The slice of :attr:`flat_grad` that holds exactly the gradients of ``parameters`` (in that
        order), or None if they are not such a run of it."""
        held = self.parameters
        start = next((i for i, p in enumerate(held) if p is parameters[0]), None) if parameters else None
        if start is None or not _same_objects(held[start : start + len(parameters)], parameters):
            return None
        offset = sum(p.numel() for p in held[:start])
        return self.flat_grad[offset : offset + sum(p.numel() for p in parameters)]

    def backward(
        self,
        d_log_prob: torch.Tensor,
        d_entropy: torch.Tensor,
        d_values: torch.Tensor,
        outer_derivatives: dict[str, torch.Tensor | None] | None = None,
    ) -> None:
        """Write ∂loss/∂θ into every parameter's ``.grad`` (views of :attr:`flat_grad`), given the loss's
        partial derivatives per sample with respect to the last :meth:`evaluate_actions`'s log-probabilities,
        entropies and values, and (``outer_derivatives``, by network name) to the values of each further
        critic from :meth:`values` — None for a critic that gets no gradient (its ``.grad`` is None, as
        autograd leaves it). The chain rule written out:

            categorical:  ∂loss/∂z = g_logπ (onehot(a) − π) − g_H π (log π + H)             (z: the logits)
            Gaussian:     ∂loss/∂μ = g_logπ (a − μ)/σ²,   ∂loss/∂log σ = Σ_n [g_logπ ((a − μ)²/σ² − 1) + g_H]

        then back through each MLP, layer by layer (∂W = δᵀx, ∂b = Σ δ, δ_in = f'(z) ⊙ δ W).
        """
        actor, critic, *outer = self.networks
        for parameter, view in zip(self.parameters, self.views, strict=True):
            if parameter.grad is not view:  # e.g. set to None by zero_grad()
                parameter.grad = view
        for network in outer:
            derivative = (outer_derivatives or {}).get(network.name)
            if derivative is None:
                for parameter in network.parameters():
                    parameter.grad = None
            else:
                _mlp_backward(network, self._saved_outer[network.name], derivative.unsqueeze(-1))
        actor_trace, critic_trace, head = self._saved
        d_log_prob = d_log_prob.unsqueeze(-1)
        if self.policy.direct_kind() == "categorical":
            actions, probs, finite, entropy = head
            d_out = (finite + entropy.unsqueeze(-1)).mul_(probs).mul_(-d_entropy.unsqueeze(-1))
            d_out.addcmul_(probs, d_log_prob, value=-1).scatter_add_(-1, actions, d_log_prob)
        else:
            z, inverse_std = head
            d_out = z * inverse_std * d_log_prob
            log_std_grad = self.policy.log_std.grad
            torch.sum((z.square() - 1).mul_(d_log_prob), 0, out=log_std_grad).add_(d_entropy.sum())
        _mlp_backward(actor, actor_trace, d_out)
        _mlp_backward(critic, critic_trace, d_values.unsqueeze(-1))


def _same_objects(these: Sequence[object], those: Sequence[object]) -> bool:
    return len(these) == len(those) and all(map(operator.is_, these, those))


def _mlp_forward(network: Network, x: torch.Tensor) -> tuple[torch.Tensor, Trace]:
    """The network's output on ``x`` computed from detached parameters (no graph), and what its backward
    needs: each layer's input and each LayerNorm's input, mean and 1/σ (autograd's own kernel,
    ``native_layer_norm``). Activations run through :func:`~nested_ac.agents.policy.call`, so their
    observers see the outputs as on the autograd path."""
    inputs: list[torch.Tensor] = []
    normalised: list[Normalised] = []
    for linear, norm, activation in zip(network.hidden, network.norms, network.activations, strict=True):
        inputs.append(x)
        x = nn.functional.linear(x, linear.weight.detach(), linear.bias.detach())
        if norm is None:
            normalised.append(None)
        else:
            z = x
            weight, bias = norm.weight.detach(), norm.bias.detach()
            x, mean, rstd = torch.native_layer_norm(z, norm.normalized_shape, weight, bias, norm.eps)
            normalised.append((z, mean, rstd))
        x = call(activation, x)
    inputs.append(x)
    output = network.output
    return nn.functional.linear(x, output.weight.detach(), output.bias.detach()), (inputs, normalised)


def _mlp_backward(network: Network, trace: Trace, d_out: torch.Tensor) -> None:
    """Write ∂loss/∂θ into the ``.grad`` of every layer of ``network`` from ∂loss/∂output and the ``trace``
    of :func:`_mlp_forward`. Through a LayerNorm y = γ ⊙ ẑ + β, ẑ = (z − μ)/σ (autograd's own kernel,
    ``native_layer_norm_backward``): ∂γ = Σ_n g ⊙ ẑ, ∂β = Σ_n g, ∂z = (1/σ)(g' − mean(g') − ẑ mean(g' ⊙ ẑ)),
    g' = γ ⊙ g, the means over the layer's units."""
    inputs, normalised = trace
    layers = (*network.hidden, network.output)
    for index in range(len(layers) - 1, -1, -1):
        layer, x = layers[index], inputs[index]
        torch.mm(d_out.t(), x, out=layer.weight.grad)
        torch.sum(d_out, 0, out=layer.bias.grad)
        if index:
            backward = ACTIVATION_BACKWARD[type(network.activations[index - 1])]
            d_out = backward(d_out.mm(layer.weight.detach()), x)
            saved = normalised[index - 1]
            if saved is not None:
                norm, (z, mean, rstd) = network.norms[index - 1], saved
                d_out, d_weight, d_bias = torch.ops.aten.native_layer_norm_backward(
                    d_out,
                    z,
                    norm.normalized_shape,
                    mean,
                    rstd,
                    norm.weight.detach(),
                    norm.bias.detach(),
                    [True, True, True],
                )
                norm.weight.grad.copy_(d_weight)
                norm.bias.grad.copy_(d_bias)
