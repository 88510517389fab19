"""Forgetting tools: protect what earlier tasks taught, through the one hook protocol.

- :class:`SoftMasking` — SPG, parameter-level soft masking of the gradient by accumulated importance
  (Konishi et al., "Parameter-Level Soft-Masking for Continual Learning", ICML 2023);
- :class:`GradientProjection` — A-GEM, the gradient projected so that it does not increase the loss on an
  episodic memory of earlier tasks (Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019);
- :class:`NaturalContinualLearning` — NCL in its diagonal form: the optimizer's update on the
  Laplace-regularised loss, preconditioned by the accumulated Fisher precision (Kao et al., "Natural
  continual learning: success is a journey, not (just) a destination", NeurIPS 2021).

All three are task-aware (:class:`TaskAwareTool`): at every schedule switch after the first rollout they
consolidate what the ending task taught, from "the ending task's data" — the last complete rollout before
the switch, kept at each rollout end — and afterwards act on every gradient in ``before_optimizer_step``
(after the backward pass and the gradient-norm clipping, before the optimizer's step; NCL also on the
optimizer's update, in ``adjust_update``), so they work with any optimizer (Adam, UPGD) and any agent built
on ``ContinualPPO`` (``ppo``, ``nested-ppo``). SPG and NCL keep state per entry of the networks the agent's
``trainable_networks()`` lists (the actor and every critic not frozen); gradient projection projects the
whole gradient (a Gaussian policy's ``log_std`` included). The exact rules are in each class's docstring.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer, RolloutBufferSamples
from stable_baselines3.common.logger import Logger
from torch import nn
from torch.distributions import Categorical, Distribution, Normal, kl_divergence

from nested_ac.hooks import Entries, Tool
from nested_ac.networks import parameter_names, policy_networks

# The rollout buffer's arrays that make up PPO's loss on a rollout (RolloutBufferSamples, in its order).
ROLLOUT_FIELDS = ("observations", "actions", "values", "log_probs", "advantages", "returns")


def named_parameters(model: BaseAlgorithm) -> dict[str, nn.Parameter]:
    """The parameters of the networks tools may change now (``model.trainable_networks()``), by their
    policy name."""
    name_of = parameter_names(model.policy)
    networks = model.trainable_networks().values()
    return {name_of[id(p)]: p for network in networks for p in network.parameters()}


def network_means(model: BaseAlgorithm, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of ``values`` (tensors by parameter name) over each network's entries that have one."""
    name_of = parameter_names(model.policy)
    means = {}
    for network in policy_networks(model.policy):
        tensors = [values[name_of[id(p)]] for p in network.parameters() if name_of[id(p)] in values]
        if tensors:
            means[network.name] = torch.cat([t.flatten() for t in tensors]).mean().item()
    return means


def zero_entries(model: BaseAlgorithm, values: dict[str, torch.Tensor], entries: Entries) -> bool:
    """Set ``values`` (tensors by parameter name) to 0 at ``entries``; whether any was there."""
    name_of = parameter_names(model.policy)
    touched = False
    for parameter, index in entries:
        tensor = values.get(name_of[id(parameter)])
        if tensor is not None:
            tensor[index] = 0.0
            touched = True
    return touched


def evenly_spaced(count: int, limit: int) -> torch.Tensor:
    """``min(count, limit)`` indices spread evenly over ``0 … limit - 1`` (deterministic: no RNG draw)."""
    return torch.linspace(0, limit - 1, min(count, limit)).round().long()


class TaskAwareTool(Tool):
    """Base of the forgetting tools: keeps the ending task's data and consolidates it at each switch.

    After every rollout it keeps a copy of the rollout (observations, actions, values, log-probabilities,
    advantages, returns); when the task clock switches from task A to another task, and a rollout has been
    kept, it calls :meth:`consolidate` with A and that rollout — the last complete rollout before the
    switch. The first task of a run (the clock's switch at step 0) consolidates nothing. The kept rollout
    and the current task are part of :meth:`state_dict`, so a resumed run consolidates what an
    uninterrupted one would.
    """

    def __init__(self) -> None:
        self.rollout: dict[str, torch.Tensor] | None = None
        self.task: int | None = None

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        buffer = model.rollout_buffer
        self.rollout = {
            name: torch.tensor(RolloutBuffer.swap_and_flatten(getattr(buffer, name)), device=model.device)
            for name in ROLLOUT_FIELDS
        }

    def on_task_switch(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer, task: int) -> None:
        ending, self.task = self.task, task
        if self.rollout is not None and ending is not None and ending != task:
            self.consolidate(model, ending)
        self.cache = None

    # What the gradient hook needs on every step, built from the tool's state on first use after a change
    # (a switch or a load): the per-step work is then a few foreach operations.
    cache: Any = None

    def consolidate(self, model: BaseAlgorithm, task: int) -> None:
        """Take in what task ``task`` (now ended; its data in ``self.rollout``) taught."""
        raise NotImplementedError

    def ending_batch(self) -> RolloutBufferSamples:
        """The kept rollout as one batch, as SB3's buffer hands out minibatches."""
        assert self.rollout is not None
        r = self.rollout
        return RolloutBufferSamples(
            r["observations"],
            r["actions"],
            r["values"].flatten(),
            r["log_probs"].flatten(),
            r["advantages"].flatten(),
            r["returns"].flatten(),
        )

    def state_dict(self) -> dict[str, Any]:
        rollout = None if self.rollout is None else {k: v.clone() for k, v in self.rollout.items()}
        return {"rollout": rollout, "task": self.task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rollout = state["rollout"]
        self.rollout = None if rollout is None else {k: v.clone() for k, v in rollout.items()}
        self.task = state["task"]
        self.cache = None


def spg_importance(gradient: torch.Tensor) -> torch.Tensor:
    """SPG's importance of each entry of one parameter tensor (Konishi et al., ICML 2023):

        γ = |tanh(standardise(∂L/∂θ))|,   standardise(g) = (g − mean(g)) / std(g) within the tensor

    on the signed gradient ∂L/∂θ accumulated over the task's data; γ ∈ [0, 1), and an entry one standard
    deviation from the tensor's mean gets γ = tanh(1) ≈ 0.76 whichever its sign. A tensor of one entry, or
    whose gradient is the same everywhere, has no spread to standardise and gets γ = 0.
    """
    if gradient.numel() < 2:
        return torch.zeros_like(gradient)
    std = gradient.std()
    if std.item() == 0.0:
        return torch.zeros_like(gradient)
    return torch.tanh((gradient - gradient.mean()) / std).abs_()


class SoftMasking(TaskAwareTool):
    """SPG, parameter-level soft masking (Konishi et al., ICML 2023).

    At each task switch, with L PPO's loss on the ending task's last rollout (its gradient is the gradient
    accumulated over that data), per parameter tensor:

        γ = |tanh(standardise(∂L/∂θ))|      (:func:`spg_importance`: the signed gradient, standardised
                                             within the tensor)
        γ_acc ← max(γ_acc, γ)               (γ_acc = 0 before the first switch)

    and every later gradient is soft-masked before the optimizer step: g ← (1 − γ_acc) ⊙ g. Entries another
    tool reinitialises (continual backprop, ReDo) get γ_acc = 0: they hold nothing of earlier tasks. An
    entry with γ_acc = 1 gets no gradient; with a momentum optimizer (Adam) it may still move on momentum
    gathered before its mask was set. Logs ``spg/<network>/masked_fraction``: the mean of γ_acc over the
    network's entries, the fraction of its gradient the mask removes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: dict[str, torch.Tensor] = {}  # γ_acc by parameter name
        self.masked_fraction: dict[str, float] = {}

    def consolidate(self, model: BaseAlgorithm, task: int) -> None:
        parameters = named_parameters(model)
        progress = model._current_progress_remaining
        clip_range_vf = None if model.clip_range_vf is None else model.clip_range_vf(progress)
        batch, clip_range = self.ending_batch(), model.clip_range(progress)
        loss, _, _ = model._loss(batch, clip_range, clip_range_vf, defaultdict(list))
        gradients = torch.autograd.grad(loss, list(parameters.values()), allow_unused=True)
        for name, gradient in zip(parameters, gradients, strict=True):
            if gradient is None:  # a frozen outer critic
                continue
            importance = spg_importance(gradient)
            accumulated = self.mask.get(name)
            self.mask[name] = importance if accumulated is None else torch.maximum(accumulated, importance)
        self.masked_fraction = network_means(model, self.mask)

    @torch.no_grad()
    def before_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        if not self.mask:
            return
        if self.cache is None:  # (parameter, 1 − γ_acc) pairs
            parameters = dict(model.policy.named_parameters())
            self.cache = [(parameters[name], 1.0 - mask) for name, mask in self.mask.items()]
        pairs = [(p.grad, keep) for p, keep in self.cache if p.grad is not None]
        torch._foreach_mul_([g for g, _ in pairs], [keep for _, keep in pairs])

    @torch.no_grad()
    def on_reinitialise(self, model: BaseAlgorithm, entries: Entries) -> None:
        """Fresh entries (continual backprop, ReDo) hold nothing of earlier tasks: γ_acc ← 0 there."""
        if zero_entries(model, self.mask, entries):
            self.cache = None
            self.masked_fraction = network_means(model, self.mask)

    def log(self, logger: Logger) -> None:
        for network, fraction in self.masked_fraction.items():
            logger.record(f"spg/{network}/masked_fraction", fraction)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "mask": {name: m.clone() for name, m in self.mask.items()},
            "masked_fraction": dict(self.masked_fraction),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mask = {name: m.clone() for name, m in state["mask"].items()}
        self.masked_fraction = dict(state["masked_fraction"])


def distribution_parameters(distribution: Distribution) -> dict[str, torch.Tensor]:
    """The tensors that rebuild ``distribution`` (Categorical: logits; Normal: loc and scale), detached."""
    if isinstance(distribution, Categorical):
        return {"logits": distribution.logits.detach().clone()}
    if isinstance(distribution, Normal):
        return {"loc": distribution.loc.detach().clone(), "scale": distribution.scale.detach().clone()}
    raise ValueError(
        f"gradient projection supports Discrete (Categorical) and Box (Normal) action spaces, "
        f"not a {type(distribution).__name__} policy"
    )


def kl_from(then: dict[str, torch.Tensor], now: Distribution) -> torch.Tensor:
    """KL(π_then ‖ π_now) per state; ``then`` from :func:`distribution_parameters` (Normal: summed over
    action dimensions, as SB3's diagonal Gaussian sums its log-probabilities)."""
    kl = kl_divergence(type(now)(**then), now)
    return kl.sum(-1) if isinstance(now, Normal) else kl


class GradientProjection(TaskAwareTool):
    """Gradient projection as in A-GEM (Chaudhry et al., ICLR 2019).

    At each task switch it stores an episodic memory of the ending task: ``memory_size`` observations
    (evenly spaced over its last rollout), with the then policy's action distribution π_then and critic
    value V_then on them as targets; a task that comes back replaces its memory at its next switch. On
    every later minibatch, with the memories of the past tasks (every task but the current one) as the
    reference batch:

        L_ref = E[KL(π_then ‖ π)] + E[(V − V_then)²]        g_ref = ∇L_ref
        if g·g_ref < 0:   g ← g − (g·g_ref / ‖g_ref‖²)·g_ref

    so the step does not increase the past tasks' loss, to first order. V is the agent's (inner) critic; g
    and g_ref span every parameter with a gradient now — a Gaussian policy's ``log_std`` included, on which
    the KL depends — so the projection is of the whole step the optimizer is about to take (a parameter
    that L_ref does not depend on has g_ref = 0 there and keeps its gradient). Costs one extra forward and
    backward pass on the reference batch per optimizer step, outside the agent's minibatch forward (no tool
    observes it). Logs
    ``projection/conflict_rate`` (the fraction of an update's steps that were projected) and
    ``projection/memory_tasks``.
    """

    def __init__(self, memory_size: int = 256) -> None:
        if memory_size <= 0:
            raise ValueError(f"projection.memory_size must be a positive integer, got {memory_size}")
        super().__init__()
        self.memory_size = memory_size
        # By task: observations, the then policy's distribution parameters and the then critic's values.
        self.memory: dict[int, dict[str, Any]] = {}
        self.steps = self.conflicts = 0

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        if self.rollout is None:  # an unsupported action space fails at the first rollout, not later
            with torch.no_grad():
                obs = torch.as_tensor(model.rollout_buffer.observations[:1, 0], device=model.device)
                distribution_parameters(model.policy.get_distribution(obs).distribution)
        super().on_rollout_end(model)

    @torch.no_grad()
    def consolidate(self, model: BaseAlgorithm, task: int) -> None:
        observations = self.ending_batch().observations
        observations = observations[
            evenly_spaced(self.memory_size, len(observations)).to(observations.device)
        ]
        policy = model.policy
        self.memory[task] = {
            "observations": observations.clone(),
            "distribution": distribution_parameters(policy.get_distribution(observations).distribution),
            "values": policy.predict_values(observations).flatten().clone(),
        }

    def reference_loss(self, model: BaseAlgorithm) -> torch.Tensor | None:
        """L_ref on the memories of every task but the current one; None if there are none."""
        if self.cache is None:  # the reference batch: (observations, π_then, V_then), or () if none
            past = [memory for task, memory in sorted(self.memory.items()) if task != self.task]
            self.cache = (
                ()
                if not past
                else (
                    torch.cat([m["observations"] for m in past]),
                    {
                        key: torch.cat([m["distribution"][key] for m in past])
                        for key in past[0]["distribution"]
                    },
                    torch.cat([m["values"] for m in past]),
                )
            )
        if not self.cache:
            return None
        observations, then, values_then = self.cache
        policy = model.policy
        kl = kl_from(then, policy.get_distribution(observations).distribution)
        values = policy.predict_values(observations).flatten()
        return kl.mean() + (values - values_then).pow(2).mean()

    def before_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        loss = self.reference_loss(model)
        if loss is None:
            return
        self.steps += 1
        # g: the whole gradient the optimizer is about to use, log_std's included (the KL depends on it).
        parameters = [p for p in model.policy.parameters() if p.grad is not None]
        if not parameters:
            return
        references = torch.autograd.grad(loss, parameters, allow_unused=True)
        with torch.no_grad():
            pairs = [(p.grad, r) for p, r in zip(parameters, references, strict=True) if r is not None]
            projected = project([g for g, _ in pairs], [r for _, r in pairs])
            self.conflicts += int(projected)

    def log(self, logger: Logger) -> None:
        if self.steps:
            logger.record("projection/conflict_rate", self.conflicts / self.steps)
        logger.record("projection/memory_tasks", len(self.memory))
        self.steps = self.conflicts = 0

    def state_dict(self) -> dict[str, Any]:
        memory = {
            task: {
                "observations": m["observations"].clone(),
                "distribution": {k: v.clone() for k, v in m["distribution"].items()},
                "values": m["values"].clone(),
            }
            for task, m in self.memory.items()
        }
        return {**super().state_dict(), "memory": memory, "steps": self.steps, "conflicts": self.conflicts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory = {
            task: {
                "observations": m["observations"].clone(),
                "distribution": {k: v.clone() for k, v in m["distribution"].items()},
                "values": m["values"].clone(),
            }
            for task, m in state["memory"].items()
        }
        self.steps, self.conflicts = state["steps"], state["conflicts"]


@torch.no_grad()
def project(gradients: list[torch.Tensor], references: list[torch.Tensor]) -> bool:
    """A-GEM's rule on the flattened gradient g (``gradients``, changed in place) and g_ref (``references``):
    if g·g_ref < 0, g ← g − (g·g_ref / ‖g_ref‖²)·g_ref. Returns whether g was projected."""
    if not gradients:
        return False
    dot = sum(torch.sum(g * r) for g, r in zip(gradients, references, strict=True))
    if dot.item() >= 0.0:
        return False
    squared_norm = sum(torch.sum(r * r) for r in references)
    torch._foreach_add_(gradients, references, alpha=-(dot / squared_norm).item())
    return True


class NaturalContinualLearning(TaskAwareTool):
    """NCL, natural continual learning (Kao et al., NeurIPS 2021), in its diagonal form.

    At each task switch, on ``fisher_samples`` states of the ending task's last rollout (evenly spaced):

        F = E_s[(∂/∂θ log π(a|s))²] + Σ_k E_s[(∂V_k(s)/∂θ)²]    the diagonal Fisher of the policy (a the
            action the policy took) and of every critic (a unit-variance Gaussian likelihood)
        Λ ← Λ + F    (Λ = λ·I before the first switch, λ = ``prior``)        µ ← θ

    NCL's update on the next task is the gradient of the Laplace-regularised loss
    L(θ) + ½(θ − µ)ᵀΛ(θ − µ), preconditioned by Λ⁻¹:

        θ ← θ − γ·Λ⁻¹·(∇L(θ) + Λ(θ − µ))                                   (Kao et al., 2021)

    An adaptive optimizer (Adam, AdaptiveUPGD) divides each coordinate of what it is handed by that
    coordinate's running RMS, so a fixed Λ⁻¹ applied to the gradient cancels within a task (what is left is
    EWC's penalty). The preconditioner therefore acts on the optimizer's update instead, where the
    optimizer cannot undo it. On every minibatch:

        g̃ = g + Λ(θ − µ), scaled down to norm ``max_norm`` if longer   handed to the optimizer
                                                                       (``before_optimizer_step``)
        Δ = the optimizer's update from g̃ (its own state and rules)
        θ ← θ_before + P ⊙ Δ,   P = λ·Λ⁻¹ ∈ (0, 1]                     (``adjust_update``)

    With a plain gradient step (Δ = −α·g̃) this is the update above with γ = α·λ; with Adam it is Adam's
    step on the Laplace-regularised loss (EWC's) preconditioned by λΛ⁻¹. P = 1 for a weight no task has
    constrained (Λ = λ): it learns at the optimizer's own rate, and a weight with Fisher F ≫ λ moves
    λ/(λ + F) as far. Entries another tool reinitialises (continual backprop, ReDo) start afresh: Λ = λ and
    µ their new values, so nothing pulls them back toward the weights they replaced. Logs
    ``ncl/<network>/precision_mean`` (mean of Λ) and ``ncl/capped_fraction`` (steps whose g̃ was capped).
    """

    def __init__(self, prior: float = 1e-2, fisher_samples: int = 256, max_norm: float = 0.5) -> None:
        if not prior > 0 or not max_norm > 0 or fisher_samples <= 0:
            raise ValueError(
                f"ncl needs prior > 0, max_norm > 0 and fisher_samples > 0; got prior={prior}, "
                f"max_norm={max_norm}, fisher_samples={fisher_samples}"
            )
        super().__init__()
        self.prior, self.fisher_samples, self.max_norm = prior, fisher_samples, max_norm
        self.precision: dict[str, torch.Tensor] = {}  # Λ by parameter name
        self.anchor: dict[str, torch.Tensor] = {}  # µ by parameter name
        self.precision_mean: dict[str, float] = {}
        self.steps = self.capped = 0
        # This step's parameters, their θ before it and P, from before_optimizer_step to adjust_update.
        self._stepping: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None

    def fisher(self, model: BaseAlgorithm, parameters: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        """The diagonal Fisher F on the kept rollout (see the class docstring), by parameter name."""
        batch = self.ending_batch()
        chosen = evenly_spaced(self.fisher_samples, len(batch.observations)).to(batch.observations.device)
        policy = model.policy
        discrete = isinstance(model.action_space, spaces.Discrete)
        outer_values = getattr(policy, "outer_values", None)  # a nested agent's outer critics
        names, tensors = list(parameters), list(parameters.values())
        squares = [torch.zeros_like(p) for p in tensors]
        for i in chosen.tolist():
            obs, action = batch.observations[i : i + 1], batch.actions[i : i + 1]
            values, log_prob, _ = policy.evaluate_actions(
                obs, action.long().flatten() if discrete else action
            )
            outer = outer_values(obs) if outer_values is not None else []
            # Actor and critics share no parameter, so one backward pass gives each one's own score.
            score = log_prob.sum() + values.sum() + sum(v.sum() for v in outer)
            for square, gradient in zip(
                squares, torch.autograd.grad(score, tensors, allow_unused=True), strict=True
            ):
                if gradient is not None:
                    square.addcmul_(gradient, gradient)
        return {name: square / len(chosen) for name, square in zip(names, squares, strict=True)}

    def consolidate(self, model: BaseAlgorithm, task: int) -> None:
        parameters = named_parameters(model)
        fisher = self.fisher(model, parameters)
        for name, parameter in parameters.items():
            previous = self.precision.get(name)
            self.precision[name] = (
                (self.prior + fisher[name]) if previous is None else previous + fisher[name]
            )
            self.anchor[name] = parameter.detach().clone()
        self.precision_mean = network_means(model, self.precision)

    @torch.no_grad()
    def before_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        """g ← g + Λ(θ − µ), capped at ``max_norm``; keeps θ for :meth:`adjust_update`."""
        self._stepping = None
        if not self.precision:
            return
        if self.cache is None:  # per parameter: θ, Λ, µ, P = λΛ⁻¹ and a buffer for θ before the step
            parameters = dict(model.policy.named_parameters())
            self.cache = [
                (p, self.precision[n], self.anchor[n], self.prior / self.precision[n], torch.empty_like(p))
                for n, p in ((n, parameters[n]) for n in self.precision)
            ]
        entries = [entry for entry in self.cache if entry[0].grad is not None]
        if not entries:
            return
        parameters, precisions, anchors, preconditioners, before = map(list, zip(*entries, strict=True))
        capped = ncl_gradient([p.grad for p in parameters], precisions, parameters, anchors, self.max_norm)
        torch._foreach_copy_(before, parameters)
        self._stepping = (parameters, before, preconditioners)
        self.steps += 1
        self.capped += int(capped)

    @torch.no_grad()
    def adjust_update(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        """θ ← θ_before + P ⊙ (θ − θ_before): the optimizer's update preconditioned by P = λΛ⁻¹."""
        if self._stepping is None:
            return
        parameters, before, preconditioners = self._stepping
        self._stepping = None
        torch._foreach_lerp_(before, parameters, preconditioners)  # θ_before + P ⊙ (θ − θ_before)
        torch._foreach_copy_(parameters, before)

    @torch.no_grad()
    def on_reinitialise(self, model: BaseAlgorithm, entries: Entries) -> None:
        """Fresh entries (continual backprop, ReDo) start as before any task: Λ = λ, and µ their fresh
        values, so nothing pulls them back toward the weights they replaced."""
        if not self.precision:
            return
        name_of = parameter_names(model.policy)
        for parameter, index in entries:
            name = name_of[id(parameter)]
            if name in self.precision:
                self.precision[name][index] = self.prior
                self.anchor[name][index] = parameter[index]
        self.cache = None
        self.precision_mean = network_means(model, self.precision)

    def log(self, logger: Logger) -> None:
        for network, mean in self.precision_mean.items():
            logger.record(f"ncl/{network}/precision_mean", mean)
        if self.steps:
            logger.record("ncl/capped_fraction", self.capped / self.steps)
        self.steps = self.capped = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "precision": {n: t.clone() for n, t in self.precision.items()},
            "anchor": {n: t.clone() for n, t in self.anchor.items()},
            "precision_mean": dict(self.precision_mean),
            "steps": self.steps,
            "capped": self.capped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.precision = {n: t.clone() for n, t in state["precision"].items()}
        self.anchor = {n: t.clone() for n, t in state["anchor"].items()}
        self.precision_mean = dict(state["precision_mean"])
        self.steps, self.capped = state["steps"], state["capped"]


@torch.no_grad()
def ncl_gradient(
    gradients: list[torch.Tensor],
    precisions: list[torch.Tensor],
    parameters: list[torch.Tensor],
    anchors: list[torch.Tensor],
    max_norm: float,
) -> bool:
    """The gradient NCL hands the optimizer: each g (changed in place) becomes g + Λ(θ − µ), the gradient
    of the Laplace-regularised loss, and the whole is scaled to norm ``max_norm`` if it is longer. Returns
    whether it was scaled."""
    torch._foreach_addcmul_(gradients, precisions, torch._foreach_sub(parameters, anchors))
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gradients))).item()
    if not math.isfinite(norm) or norm <= max_norm:
        return False
    torch._foreach_mul_(gradients, max_norm / norm)
    return True
