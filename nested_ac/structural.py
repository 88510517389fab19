"""Tools that change the networks' layers themselves: layer resets and plasticity injection.

- :class:`LayerReset` — the last k layers (or all) of every network redrawn from the policy's own
  initialisation, with their optimizer state (Nikishin et al., "The primacy bias in deep reinforcement
  learning", ICML 2022; Juliani & Ash's reset-final and reset-all, NeurIPS 2024);
- :class:`PlasticityInjection` — the head of the actor and of the critic frozen and a fresh head added
  twice, once trainable and once frozen, so that the output is unchanged at that instant (Nikishin, Oh,
  Ostrovski, Lyle, Pascanu, Dabney & Barreto, "Deep reinforcement learning with plasticity injection",
  NeurIPS 2023); :class:`InjectedHead` is the module that replaces an injected head.

Both fire at task switches (never at the start of training), every N updates (at the end of every N-th
rollout, before its update) or — injection only — once, at the end of the first rollout at or after a given
environment step (:class:`Trigger`). A "layer" is one ``Linear`` of a network with what follows it up to the
next ``Linear`` (its activation): the last layer is the output head.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from torch import nn

from nested_ac.hooks import Entries, Tool
from nested_ac.networks import Network, lecun_uniform_
from nested_ac.plasticity import ContinualBackprop, initialisation

# SB3's orthogonal gains (ActorCriticPolicy._build): hidden layers √2, the action head 0.01, value heads 1.
HIDDEN_GAIN, ACTION_GAIN, VALUE_GAIN = math.sqrt(2), 0.01, 1.0


class Trigger:
    """When a structural tool fires (``<key>.at``): ``switch`` — at every task switch (a change of task,
    never the start of training); ``every`` — at the end of every ``every``-th rollout (before its update:
    every N updates); ``once`` — at the end of the first rollout at or after environment step ``step``."""

    def __init__(self, key: str, at: str, every: int, step: int, choices: tuple[str, ...]) -> None:
        if at not in choices:
            raise ValueError(f"{key}.at must be one of {', '.join(choices)}, got {at!r}")
        if at == "every" and every < 1:
            raise ValueError(f"{key}.every must be an integer >= 1 (updates), got {every}")
        if at == "once" and step < 0:
            raise ValueError(f"{key}.step must be >= 0 (an environment step), got {step}")
        self.at, self.every, self.step = at, every, step
        self.task: int | None = None  # the task of the last notification; None before the start
        self.rollouts = 0
        self.fired = 0

    def at_switch(self, task: int) -> bool:
        """Whether to fire at this task notification (the first one is the start, not a switch)."""
        started, self.task = self.task is not None, task
        return self._fire(self.at == "switch" and started)

    def at_rollout_end(self, num_timesteps: int) -> bool:
        """Whether to fire at the end of this rollout (``num_timesteps``: the steps collected so far)."""
        self.rollouts += 1
        if self.at == "every":
            return self._fire(self.rollouts % self.every == 0)
        return self._fire(self.at == "once" and not self.fired and num_timesteps >= self.step)

    def _fire(self, due: bool) -> bool:
        self.fired += due
        return due

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task, "rollouts": self.rollouts, "fired": self.fired}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task, self.rollouts, self.fired = state["task"], state["rollouts"], state["fired"]


@torch.no_grad()
def initialise_layer(policy: Any, network: str, linear: nn.Linear, output: bool) -> None:
    """Draw ``linear`` (a layer of network ``network``; ``output``: its head) afresh from the policy's own
    initialisation (:func:`~nested_ac.plasticity.initialisation`): ``orthogonal`` — SB3's orthogonal
    matrix with gain √2 for hidden layers, 0.01 for the actor's head and 1 for a value head, bias 0;
    ``lecun_uniform`` — U(±√(3/fan_in)), bias 0; ``default`` — PyTorch's ``nn.Linear`` initialisation.
    Draws from torch's global generator."""
    init = initialisation(policy)
    if init == "lecun_uniform":
        lecun_uniform_(linear)
    elif init == "orthogonal":
        gain = (ACTION_GAIN if network == "actor" else VALUE_GAIN) if output else HIDDEN_GAIN
        nn.init.orthogonal_(linear.weight, gain=gain)
        linear.bias.zero_()
    else:
        linear.reset_parameters()


def forget_optimizer_state(optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter]) -> None:
    """Drop the optimizer's state of ``parameters``: the optimizer starts them afresh at its next step —
    moments zero and step count zero (per tensor, or per weight where it keeps one per weight), Adam's bias
    correction restarting with them — as a new optimizer would."""
    for parameter in parameters:
        optimizer.state.pop(parameter, None)


def _layer_count(key: str, layers: int | str) -> int | str:
    """``layers`` checked: an integer >= 1 or ``all``."""
    if layers == "all" or (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1):
        return layers
    raise ValueError(f"{key}.layers must be an integer >= 1 (the last k layers) or 'all', got {layers!r}")


def _last_layers(key: str, network: Network, layers: int | str) -> tuple[nn.Linear, ...]:
    """The last ``layers`` Linear layers of ``network`` (all of them for ``all``), output head last."""
    linears = (*network.hidden, network.output)
    if layers == "all":
        return linears
    if layers > len(linears):
        raise ValueError(
            f"{key}.layers is {layers}, but network {network.name!r} has {len(linears)} layers "
            "(hidden layers and its head); use a smaller number or 'all'"
        )
    return linears[len(linears) - layers :]


class LayerReset(Tool):
    """Layer resets (Nikishin et al., ICML 2022; Juliani & Ash, NeurIPS 2024's reset-final and reset-all).

    When the :class:`Trigger` fires, for every network the agent lets tools change (the actor and every
    critic: a nested agent's outer critics too, unless frozen; never a Gaussian policy's ``log_std``) the
    last ``layers`` layers (``all``: every layer) are redrawn from the policy's own initialisation,

        W_l, b_l ← a fresh draw of layer l's initialisation   (:func:`initialise_layer`)
        γ_l, β_l ← 1, 0                                     (a hidden layer's LayerNorm, if it has one)

    and their optimizer state is dropped (:func:`forget_optimizer_state`: moments and step count start from
    zero, as in a new optimizer). Whole tensors are reset, so one step count per tensor suffices and the
    run's optimizer is left as configured. Every other tool hears of the fresh entries
    (``model.notify_reinitialised``: L2-Init's θ_0 takes the fresh values, continual backprop restarts the
    units' ages, SPG and NCL forget them). Logs ``reset/<network>/count``.

    Nikishin et al. reset at a fixed period of updates (off-policy agents, which retrain on their replay
    buffer: ``at="every"``); Juliani & Ash reset at every task switch (``at="switch"``). With
    ``at="every"`` the reset falls at a rollout's end, so the update that follows trains the fresh layers
    on data that the previous network collected (PPO's ratio against that network, clipped as at any
    change of policy).
    """

    AT = ("switch", "every")

    def __init__(self, layers: int | str = 1, at: str = "switch", every: int = 100) -> None:
        self.layers = _layer_count("reset", layers)
        self.trigger = Trigger("reset", at, every, 0, self.AT)
        self.count: dict[str, int] = {}

    def on_task_switch(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer, task: int) -> None:
        if self.trigger.at_switch(task):
            self.reset(model)
        else:
            self._check(model)

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        if self.trigger.at_rollout_end(model.num_timesteps):
            self.reset(model)

    def _check(self, model: BaseAlgorithm) -> None:
        """A ValueError now (not at the first reset) where a network has fewer layers than ``layers``."""
        for network in model.trainable_networks().values():
            _last_layers("reset", network, self.layers)

    @torch.no_grad()
    def reset(self, model: BaseAlgorithm) -> None:
        """Redraw the chosen layers of every network, drop their optimizer state and tell the other tools."""
        policy, entries = model.policy, []
        for network in model.trainable_networks().values():
            norm_of = {id(linear): norm for linear, norm in zip(network.hidden, network.norms, strict=True)}
            for linear in _last_layers("reset", network, self.layers):
                initialise_layer(policy, network.name, linear, output=linear is network.output)
                norm = norm_of.get(id(linear))  # its LayerNorm restarts too: γ = 1, β = 0
                if norm is not None:
                    norm.reset_parameters()
                reset = [linear.weight, linear.bias, *(() if norm is None else (norm.weight, norm.bias))]
                forget_optimizer_state(policy.optimizer, reset)
                rows = torch.arange(linear.out_features, device=linear.weight.device)
                entries += [(parameter, rows) for parameter in reset]
            self.count[network.name] = self.count.get(network.name, 0) + 1
        model.notify_reinitialised(entries, self)

    def log(self, logger: Logger) -> None:
        for name, count in self.count.items():
            logger.record(f"reset/{name}/count", count)

    def state_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger.state_dict(), "count": dict(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trigger.load_state_dict(state["trigger"])
        self.count = dict(state["count"])


class InjectedHead(nn.Module):
    """An injected head (Nikishin et al., NeurIPS 2023): with ``frozen`` = [h_θ, h_θ′₁, h_θ′₁,₀, h_θ′₂, …],

        h(x) = h_θ(x) + Σ_j (h_θ′ⱼ(x) − h_θ′ⱼ,₀(x)) + (h_θ′(x) − h_θ′₀(x))

    where every head but the ``trainable`` one θ′ is frozen (no gradient; the input x, the encoder's
    output, still gets the gradient of the whole sum), ``anchor`` θ′₀ is θ′ as it was drawn, and each
    earlier injection left its trained head and its anchor as a frozen pair. Each difference is taken
    before it is added, so that at injection, where θ′ = θ′₀, the output is h(x) bit for bit.
    ``trainable`` and ``anchor`` are ``nn.Sequential`` (Linear → activation … → Linear).
    """

    def __init__(self, frozen: list[nn.Module], trainable: nn.Sequential, anchor: nn.Sequential) -> None:
        super().__init__()
        self.frozen = nn.ModuleList(frozen)
        self.trainable = trainable
        self.anchor = anchor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.frozen[0](x)
        for index in range(1, len(self.frozen), 2):
            out = out + (self.frozen[index](x) - self.frozen[index + 1](x))
        return out + (self.trainable(x) - self.anchor(x))


def _frozen(module: nn.Module) -> nn.Module:
    return module.requires_grad_(False)


class PlasticityInjection(Tool):
    """Plasticity injection (Nikishin, Oh, Ostrovski, Lyle, Pascanu, Dabney & Barreto, NeurIPS 2023).

    Each network — the actor and PPO's critic (the nested agent's inner critic V_1, which learns from the
    returns; its outer critics are left as they are) — is an encoder φ, its first layers, and a head h_θ, its
    last ``layers`` layers (1: the output layer alone). When the :class:`Trigger` fires, θ is frozen and a
    fresh head θ′ (drawn from the policy's own initialisation, :func:`initialise_layer`) is added twice,
    once trainable and once as a frozen copy θ′₀:

        h_θ(φ(x))  →  h_θ(φ(x)) + h_θ′(φ(x)) − h_θ′₀(φ(x))

    unchanged at that instant, bit for bit (:class:`InjectedHead`). φ and θ′ train on; θ and θ′₀ never
    change. The encoder gets the gradient of the whole sum, θ and θ′₀ included (the paper freezes the
    heads' parameters, not the features; at injection the encoder's gradient is then the one it had).
    The number of trainable parameters is unchanged: the optimizer drops θ's state and takes θ′ in θ's
    place, in the same param group, with a fresh state (moments and step count zero).

    A later injection freezes the trained θ′ with its anchor θ′₀: the frozen part is
    h_θ + (h_θ′ − h_θ′₀), and a new pair θ″ = θ″₀ is added. To keep the cost bounded:

    - a head of one layer (``layers=1``, linear) folds every frozen term into one frozen Linear,
      W ← W_θ + W_θ′ − W_θ′₀ (and b alike): always three linear heads, equal to float rounding at each later
      injection (exact at the first);
    - a deeper head has no such fold (a sum of nonlinear heads is no smaller head): each injection adds two
      frozen heads to the forward pass (after n injections 2n + 1 heads, one trainable), so a repeated
      injection of a deeper head needs ``limit``, the most injections made (later firings are skipped).

    Logs ``inject/<network>/count`` (injections made) and ``inject/<network>/frozen_heads``. The fast
    engine's hand-written gradient knows plain ``Linear`` heads only: an injected policy takes autograd,
    and the run's log says so (``engine/gradient``). With a deeper head the new head's activations are
    modules continual backprop never hooked (it hooks once), so the two are refused together; the nested
    agent's Polyak mode (which pairs the critics' parameters one to one) is refused too.
    """

    AT = ("switch", "every", "once")

    def __init__(
        self, layers: int = 1, at: str = "switch", every: int = 100, step: int = 0, limit: int | None = None
    ) -> None:
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(
                f"inject.layers must be an integer >= 1 (the head's last k layers), got {layers!r}"
            )
        if limit is not None and limit < 1:
            raise ValueError(f"inject.limit must be >= 1 injections (null: no limit), got {limit}")
        if layers > 1 and at != "once" and limit is None:
            raise ValueError(
                f"inject.layers = {layers} with inject.at = {at!r}: each injection of a head deeper than one "
                "layer adds two frozen heads to the forward pass; set inject.limit (the most injections)"
            )
        self.layers, self.limit = layers, 1 if at == "once" else limit
        self.trigger = Trigger("inject", at, every, step, self.AT)
        self.injections = 0  # made so far (the networks' structure follows from it: see rebuild)
        self.networks: list[str] = []  # the names of the injected networks

    def on_task_switch(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer, task: int) -> None:
        if self.trigger.at_switch(task):
            self.inject(model)
        else:
            self._check(model)

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        if self.trigger.at_rollout_end(model.num_timesteps):
            self.inject(model)

    @staticmethod
    def heads(model: BaseAlgorithm) -> dict[str, tuple[nn.Sequential, str]]:
        """The networks injection acts on, by name: each one's MLP and the policy attribute of its head."""
        policy = model.policy
        critic = "critic_1" if hasattr(policy, "critics") else "critic"
        mlps = policy.mlp_extractor
        return {"actor": (mlps.policy_net, "action_net"), critic: (mlps.value_net, "value_net")}

    def _check(self, model: BaseAlgorithm) -> None:
        """A ValueError for a model injection cannot serve (see the class docstring)."""
        if self.layers > 1 and any(isinstance(tool, ContinualBackprop) for tool in model.tools):
            raise ValueError(
                f"inject.layers = {self.layers} with continual backprop: the injected head's activations "
                "would go unobserved (continual backprop hooks a network's activations once); use "
                "inject.layers = 1"
            )
        if getattr(model, "mode", None) == "polyak" and len(model.policy.critics()) > 1:
            raise ValueError(
                "plasticity injection changes the inner critic's layers, and nested.mode='polyak' pairs "
                "them with the outer critics' one to one; use nested.mode='distill'"
            )
        for name, (mlp, attribute) in self.heads(model).items():
            head = getattr(model.policy, attribute)
            if not isinstance(head, InjectedHead):
                self._head_start(name, mlp, head)

    def inject(self, model: BaseAlgorithm) -> None:
        """Inject a fresh head into the actor and the critic (nothing once ``limit`` injections are made)."""
        if self.limit is not None and self.injections >= self.limit:
            return
        self._check(model)
        self._inject(model)
        self.injections += 1

    @torch.no_grad()
    def _inject(self, model: BaseAlgorithm, notify: bool = True) -> None:
        """One injection into every network of :meth:`heads`; ``notify``: tell the other tools of θ′ (their
        state for it comes from the checkpoint on a rebuild)."""
        policy, optimizer = model.policy, model.policy.optimizer
        entries: Entries = []
        self.networks = list(self.heads(model))
        for name, (mlp, attribute) in self.heads(model).items():
            head = getattr(policy, attribute)
            if not isinstance(head, InjectedHead):  # the first injection: θ becomes the frozen head
                trained = self._cut_head(name, mlp, head)
                frozen = [_frozen(trained)]
            elif len(head.trainable) == 1:  # a linear head: fold θ′ − θ′₀ into the frozen one
                trained, frozen = head.trainable, list(head.frozen)
                pairs = zip(trained.parameters(), head.anchor.parameters(), strict=True)
                for total, (plus, minus) in zip(frozen[0].parameters(), pairs, strict=True):
                    total.add_(plus - minus)
            else:  # a deeper head: θ′ and θ′₀ join the frozen heads as a pair
                trained = head.trainable
                frozen = [*head.frozen, _frozen(trained), head.anchor]
            fresh = copy.deepcopy(trained).requires_grad_(True)
            linears = [module for module in fresh if isinstance(module, nn.Linear)]
            for module in fresh:
                if isinstance(module, nn.Linear):
                    initialise_layer(policy, name, module, output=module is linears[-1])
                elif hasattr(module, "reset_parameters"):  # e.g. a LayerNorm's gain and bias: 1 and 0
                    module.reset_parameters()
            setattr(policy, attribute, InjectedHead(frozen, fresh, _frozen(copy.deepcopy(fresh))))
            _replace_in_optimizer(optimizer, list(trained.parameters()), list(fresh.parameters()))
            entries += [(p, torch.arange(len(p), device=p.device)) for p in fresh.parameters()]
        model.networks_changed()
        if notify:
            model.notify_reinitialised(entries, self)

    def _head_start(self, name: str, mlp: nn.Sequential, head: nn.Linear) -> nn.Linear:
        """The first Linear of the head of network ``name`` (its MLP ``mlp``, its output ``head``)."""
        linears = [module for module in mlp if isinstance(module, nn.Linear)] + [head]
        if self.layers > len(linears):
            raise ValueError(
                f"inject.layers is {self.layers}, but network {name!r} has {len(linears)} layers (hidden "
                "layers and its head)"
            )
        return linears[len(linears) - self.layers]

    def _cut_head(self, name: str, mlp: nn.Sequential, head: nn.Linear) -> nn.Sequential:
        """Cut the head's layers off ``mlp`` (the encoder keeps the rest, in the same ``nn.Sequential``) and
        return them, with the output ``head``, as one ``nn.Sequential``."""
        first = self._head_start(name, mlp, head)
        if first is head:
            return nn.Sequential(head)
        modules = list(mlp)
        cut = next(index for index, module in enumerate(modules) if module is first)
        del mlp[cut:]
        return nn.Sequential(*modules[cut:], head)

    def rebuild(self, model: BaseAlgorithm, state: dict[str, Any]) -> None:
        """Make a fresh run's networks the shape the checkpointed ones had (``state['injections']``
        injections), so that their saved weights and optimizer state fit; the values come from the
        checkpoint."""
        for _ in range(state["injections"]):
            self._inject(model, notify=False)

    def log(self, logger: Logger) -> None:
        if not self.injections:
            return
        heads = 1 + 2 * (self.injections if self.layers > 1 else 1)
        for name in self.networks:
            logger.record(f"inject/{name}/count", self.injections)
            logger.record(f"inject/{name}/frozen_heads", heads - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger.state_dict(), "injections": self.injections}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trigger.load_state_dict(state["trigger"])
        self.injections = state["injections"]


def _replace_in_optimizer(
    optimizer: torch.optim.Optimizer, old: list[nn.Parameter], new: list[nn.Parameter]
) -> None:
    """``new`` take the place of ``old`` in the optimizer: in the param group that held them, at the first
    one's position (the same place on a rebuild, so that a checkpoint's state maps back); ``old``'s state is
    dropped and ``new`` start afresh."""
    gone = {id(p) for p in old}
    for group in optimizer.param_groups:
        params = group["params"]
        positions = [i for i, p in enumerate(params) if id(p) in gone]
        if positions:
            kept = [p for p in params[: positions[0]] if id(p) not in gone]
            group["params"] = kept + new + [p for p in params[positions[0] :] if id(p) not in gone]
            new = []
    forget_optimizer_state(optimizer, old)
