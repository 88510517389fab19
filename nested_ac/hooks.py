"""The one hook protocol every tool follows: plasticity tools (continual backprop, ReDo, Shrink & Perturb
...), forgetting tools (SPG, projection, NCL) and diagnostics alike.

An agent that supports tools (``nested_ac.agents.ContinualPPO`` and its subclasses) calls, for each tool in
its ``tools`` list:

- ``before_gradient_clipping(model, optimizer)`` on every minibatch of the update, right after the backward
  pass and before the gradient-norm clipping: a tool adds the gradient of its own term of the loss to
  ``parameter.grad`` in place (a regularizer that is part of the loss, so clipped with PPO's gradient, as
  the loss's own terms are);
- ``before_optimizer_step(model, optimizer)`` on every minibatch of the update, after the backward pass and
  the gradient-norm clipping and before ``optimizer.step()``: the gradients in ``parameter.grad`` are the
  ones the optimizer is about to use, and a tool may change them in place (masking, projection,
  preconditioning);
- ``adjust_update(model, optimizer)`` right after every optimizer step, before any tool's
  ``after_optimizer_step``: the parameters have just taken exactly the optimizer's update, which a tool may
  rescale (NCL's preconditioner acts there, where an adaptive optimizer cannot undo it);
- ``after_optimizer_step(model, optimizer)`` after every optimizer step inside the update (after every
  tool's ``adjust_update``);
- ``on_task_switch(model, optimizer, task)`` when the task clock sets the environment's task: once at the
  start of training (the first task) and at every schedule switch after;
- ``on_rollout_end(model)`` after each rollout is collected;
- ``on_reinitialise(model, entries)`` when another tool has just reinitialised entries of the networks
  (continual backprop and ReDo replacing units): a tool that keeps state per entry (SPG's mask, NCL's
  precision and anchor, L2-Init's initial weights, continual backprop's unit ages) resets it for them;
- ``log(logger)`` after each update, to record scalars on SB3's logger;
- ``state_dict()`` / ``load_state_dict(state)`` to save and restore the tool's own state;
- ``rebuild(model, state)`` when a run resumes, before the checkpoint's weights are loaded: a tool that
  changes the networks' layers (plasticity injection) gives the fresh networks the checkpointed shape.

A new method is one subclass of :class:`Tool` overriding what it needs, not a fork of PPO.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger

# Entries a tool has just reinitialised: (parameter, index) pairs, ``parameter[index]`` the fresh entries.
Entries = list[tuple[torch.nn.Parameter, Any]]


class Tool:
    """Base class of every tool an agent runs (plasticity and forgetting tools, diagnostics): every hook is a
    no-op until a subclass overrides it.

    ``restarts_entry_state``: the tool restarts the optimizer state of single entries of a tensor (continual
    backprop's and ReDo's replaced units); the agent then gives its optimizer one step count per weight
    (Adam becomes ``ElementwiseAdam``, UPGD gets ``per_element_steps``), so a restarted weight's bias
    correction restarts too. A tool may set it per instance: continual backprop with
    ``reset_optimizer_state=False`` replaces units and leaves their state, so it says False; a tool that
    resets whole tensors (layer resets) drops their state and needs no step count per weight.
    """

    restarts_entry_state: bool = False

    def before_gradient_clipping(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        """Called with the loss's gradients in place, before they are clipped: add a loss term's gradient
        to ``parameter.grad`` in place (on the fast engine every ``.grad`` is a view of one flat tensor,
        which the clipping then scales whole)."""

    def before_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        """Called with the clipped gradients in place, just before every optimizer step."""

    def adjust_update(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        """Called right after every optimizer step, before any tool's :meth:`after_optimizer_step`: the
        parameters hold exactly the optimizer's update (a tool that rescales it keeps the parameters as
        they were before the step from ``before_optimizer_step``)."""

    def after_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        """Called after every optimizer step."""

    def on_task_switch(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer, task: int) -> None:
        """Called when every environment copy has just been set to ``task`` (at the start, then at every
        switch; a resumed run is not notified again of the task it was on)."""

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        """Called after each rollout is collected, before the update."""

    def on_reinitialise(self, model: BaseAlgorithm, entries: Entries) -> None:
        """Called when another tool has just reinitialised ``entries`` (fresh weights, their optimizer state
        restarted where that tool's ``restarts_entry_state`` says so): reset whatever this tool keeps per
        entry."""

    def log(self, logger: Logger) -> None:
        """Record the tool's scalars; called after each update."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def rebuild(self, model: BaseAlgorithm, state: dict[str, Any]) -> None:
        """Called on a resuming run, with what :meth:`state_dict` returned, before the checkpoint's weights
        and optimizer state are loaded: a tool that changes the networks' layers or the optimizer's param
        groups makes them as they were, so that the saved values fit."""
