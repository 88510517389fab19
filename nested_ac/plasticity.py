"""Plasticity tools: continual backprop and the standard baselines, all through the one hook protocol.

- :class:`ContinualBackprop` — generate-and-test replacement of low-utility hidden units (Dohare et al.,
  "Loss of plasticity in deep continual learning", Nature 2024);
- :class:`ShrinkPerturb` — θ ← λθ + σε each step, or θ ← αθ + (1 − α)θ_fresh at each task switch
  (Ash & Adams, "On warm-starting neural network training", NeurIPS 2020);
- :class:`L2Init` — a pull toward the initial weights (Kumar et al., "Maintaining plasticity in continual
  learning via regenerative regularization", 2023);
- :class:`ReDo` — reset τ-dormant units every F updates (Sokar et al., "The dormant neuron phenomenon in
  deep reinforcement learning", ICML 2023).

L2 (weight decay) and "non-stationary Adam" (β1 = β2) are optimizer settings: ``optimizer.weight_decay``
and ``optimizer.betas`` (presets ``cbp-paper`` and ``nonstationary-adam``).

Every tool acts on the networks the agent's ``trainable_networks()`` lists — the actor and every critic
that may change now (a nested agent's frozen outer critics are left out) — and on nothing else (a Gaussian
policy's ``log_std`` is left alone).

The unit resets (continual backprop, ReDo) zero the optimizer state of exactly the reset entries and
tell every other tool which entries are fresh (``on_reinitialise``: SPG's mask, NCL's precision and anchor,
L2-Init's θ_0 and continual backprop's unit ages restart there). An agent built with either tool gives its
optimizer one step count per weight (:func:`nested_ac.optim.with_element_steps`), so that zeroing also
restarts each reset weight's bias correction; a tool added to an agent whose optimizer keeps one step count
per tensor is refused with a ValueError.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from torch import nn

from nested_ac.hooks import Entries, Tool
from nested_ac.layers import CReLU
from nested_ac.metrics import dormant_mask
from nested_ac.networks import Network, lecun_uniform_, parameter_names, policy_networks, probe, unit_outputs
from nested_ac.optim import keeps_one_step_per_tensor

# Per-parameter state tensors (shaped like the parameter) of torch's optimizers; an optimizer with a
# ``per_parameter_state_keys`` attribute (nested_ac.optim's optimizers) names its own.
TORCH_OPTIMIZER_STATE_KEYS: dict[type[torch.optim.Optimizer], tuple[str, ...]] = {
    torch.optim.Adam: ("exp_avg", "exp_avg_sq"),
    torch.optim.AdamW: ("exp_avg", "exp_avg_sq"),
    torch.optim.SGD: ("momentum_buffer",),
}


def optimizer_state_keys(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    """The names of ``optimizer``'s per-parameter state tensors; a ValueError for an unknown layout."""
    keys = getattr(optimizer, "per_parameter_state_keys", None)
    if keys is not None:
        return tuple(keys)
    if type(optimizer) in TORCH_OPTIMIZER_STATE_KEYS:
        return TORCH_OPTIMIZER_STATE_KEYS[type(optimizer)]
    known = ", ".join(cls.__name__ for cls in TORCH_OPTIMIZER_STATE_KEYS)
    raise ValueError(
        f"unknown optimizer state layout of {type(optimizer).__name__}: supported are {known} and optimizers "
        "with a per_parameter_state_keys attribute (ElementwiseAdam, UPGD, AdaptiveUPGD)"
    )


def initialisation(policy: Any) -> str:
    """How ``policy`` initialised its hidden layers: ``lecun_uniform`` (a policy with ``init`` so),
    ``orthogonal`` (SB3's, with ``ortho_init``) or ``default`` (PyTorch's ``nn.Linear`` init)."""
    if getattr(policy, "init", None) == "lecun_uniform":
        return "lecun_uniform"
    return "orthogonal" if policy.ortho_init else "default"


@torch.no_grad()
def reset_units(
    network: Network,
    layer: int,
    units: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    init: str,
    reset_optimizer: bool = True,
) -> Entries:
    """Replace hidden ``units`` of ``layer`` by fresh ones whose outgoing weights are 0.

    Incoming weights are redrawn from the layer's own initialisation ``init`` (:func:`initialisation`) —
    ``orthogonal``: SB3's orthogonal init with gain √2 for hidden layers (a fresh orthogonal matrix of the
    layer's shape, of which the rows of ``units`` are taken); ``lecun_uniform``: U(±√(3/fan_in));
    ``default``: PyTorch's ``nn.Linear`` init — their bias set to 0, a LayerNorm's gain and bias of the units
    set to γ_i = 1 and β_i = 0, their outgoing weights (the next layer's columns: both of a CReLU or Fourier
    unit's outputs, :meth:`~nested_ac.networks.Network.outgoing_columns`) set to 0, and, with
    ``reset_optimizer``, the optimizer's state of exactly those entries zeroed: with an optimizer that keeps
    a step count per weight (``ElementwiseAdam``, UPGD with ``per_element_steps``) that restarts them exactly
    as a fresh optimizer would.

    The next layer loses the units' contribution W_out[:, i]·h_i: the output changes unless it is moved
    elsewhere first (continual backprop moves its average into the next bias, :func:`transfer_to_bias`).
    With a LayerNorm the other units of the layer change too: the fresh units' pre-activations enter the
    mean and variance every unit is normalised by. Returns the reinitialised entries: the incoming rows and
    biases, the LayerNorm's gains and biases, and the outgoing columns.
    """
    incoming, outgoing, norm = network.hidden[layer], network.outgoing(layer), network.norms[layer]
    fresh = nn.Linear(incoming.in_features, incoming.out_features).to(incoming.weight.device)
    if init == "orthogonal":
        nn.init.orthogonal_(fresh.weight, gain=math.sqrt(2))
    elif init == "lecun_uniform":
        lecun_uniform_(fresh)
    incoming.weight[units] = fresh.weight[units].to(incoming.weight.dtype)
    incoming.bias[units] = 0.0
    columns = network.outgoing_columns(layer, units)
    outgoing.weight[:, columns] = 0.0
    entries: Entries = [(incoming.weight, units), (incoming.bias, units)]
    if norm is not None:
        norm.weight[units] = 1.0
        norm.bias[units] = 0.0
        entries += [(norm.weight, units), (norm.bias, units)]
    entries.append((outgoing.weight, (slice(None), columns)))
    if reset_optimizer:
        keys = optimizer_state_keys(optimizer)
        for parameter, index in entries:
            state = optimizer.state.get(parameter, {})
            for key in keys:
                if isinstance(state.get(key), torch.Tensor):
                    state[key][index] = 0.0
    return entries


@torch.no_grad()
def transfer_to_bias(network: Network, layer: int, units: torch.Tensor, means: torch.Tensor) -> None:
    """b_next += W_out[:, c]·``means``, c the outgoing columns of ``units``: the next layer keeps the average
    input of ``units`` (``means``: the mean of each of their outputs, in the order of
    :meth:`~nested_ac.networks.Network.outgoing_columns`) once their outgoing weights are zeroed (Dohare et
    al., Nature 2024)."""
    outgoing = network.outgoing(layer)
    columns = network.outgoing_columns(layer, units)
    outgoing.bias.add_(outgoing.weight[:, columns] @ means.to(outgoing.weight.dtype))


def reset_layers(
    model: BaseAlgorithm,
    origin: Tool,
    network: Network,
    units_by_layer: dict[int, torch.Tensor],
    means_by_layer: dict[int, torch.Tensor] | None = None,
) -> None:
    """The reset of tool ``origin``: :func:`reset_units` for several layers of one of ``model``'s networks
    (with the policy's optimizer and initialisation, and the optimizer state reset if
    ``origin.restarts_entry_state`` says so), last layer first — a fresh row of layer l+1 would
    otherwise give back outgoing weights to the units just replaced in layer l — then every other tool of
    ``model`` is told which entries are fresh (``on_reinitialise``).

    With ``means_by_layer`` (each replaced unit's mean activation, aligned with ``units_by_layer``) every
    layer's :func:`transfer_to_bias` comes first, on the weights before any reset: a replaced unit of layer
    l+1 then ends with bias 0, not with a share of layer l's transfer through its fresh weights.
    """
    policy = model.policy
    for layer, means in (means_by_layer or {}).items():
        transfer_to_bias(network, layer, units_by_layer[layer], means)
    entries: Entries = []
    init = initialisation(policy)
    for layer in sorted(units_by_layer, reverse=True):
        units = units_by_layer[layer]
        entries += reset_units(network, layer, units, policy.optimizer, init, origin.restarts_entry_state)
    if entries:
        model.notify_reinitialised(entries, origin)


def check_steps_per_weight(optimizer: torch.optim.Optimizer, tool: str) -> None:
    """A ValueError unless ``optimizer`` can restart single weights' bias correction (one step count per
    weight, or none): ``tool`` resets units."""
    if keeps_one_step_per_tensor(optimizer):
        raise ValueError(
            f"{tool} restarts the optimizer state of the weights it resets, step count included, but "
            f"{type(optimizer).__name__} keeps one step count per tensor; pass the tool when building the "
            "agent (ContinualPPO(..., tools=[...]) then uses ElementwiseAdam, or UPGD with "
            "per_element_steps) or build the optimizer so yourself"
        )


NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, CReLU)  # outputs ≥ 0 (or -0): mean |h| = mean h


class ActivationRecorder:
    """Keeps each activation's last output in the agent's own forward pass on a minibatch
    (``model.in_minibatch_forward``, see ``ContinualPPO.minibatch_forward``): not rollouts, probes or
    another tool's forward passes (gradient projection's memory batch, a consolidation), whichever engine
    computes it and whether or not gradients are on."""

    def __init__(self, networks: list[Network], model: BaseAlgorithm) -> None:
        self.model = model
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self._handles = [
            activation.register_forward_hook(self._hook((network.name, layer)))
            for network in networks
            for layer, activation in enumerate(network.activations)
        ]

    def _hook(self, key: tuple[str, int]):
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self.model.in_minibatch_forward:
                self.outputs[key] = output.detach()

        record.observes_only = (
            True  # reads the output, never replaces it (the fast engine's backward relies on it)
        )
        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


LayerKey = tuple[str, int]  # (network name, hidden layer)
ByLayer = dict[LayerKey, torch.Tensor]


class _NetworkTrace:
    """Continual backprop's running means f and utilities U of every layer of one network as views into one
    flat tensor each (``mean``, ``utility``), with flat work buffers for the batch means, the outgoing weight
    mass Σ_k |W_out[k, i]| and the magnitudes mean |h_i| (``batch_means`` … their views by layer): the
    elementwise updates of all layers are one operation each."""

    __slots__ = (
        "views", "mean", "utility", "batch_mean", "batch_means", "weight_mass", "weight_masses",
        "magnitude", "magnitudes",
    )  # fmt: skip

    def __init__(self, keys: list[LayerKey], means: ByLayer, utilities: ByLayer) -> None:
        sizes = [len(means[key]) for key in keys]
        for name, values in (("mean", means), ("utility", utilities)):  # current values kept
            flat = torch.cat([values[key] for key in keys])
            values.update(zip(keys, flat.split(sizes), strict=True))
            setattr(self, name, flat)
        self.views = [means[key] for key in keys] + [utilities[key] for key in keys]
        for name, by_layer in (
            ("batch_mean", "batch_means"),
            ("weight_mass", "weight_masses"),
            ("magnitude", "magnitudes"),
        ):
            flat = torch.empty_like(self.mean)
            setattr(self, name, flat)
            setattr(self, by_layer, list(flat.split(sizes)))

    def holds(self, keys: list[LayerKey], means: ByLayer, utilities: ByLayer) -> bool:
        """True while the running means and utilities of ``keys`` are still the views this layout made."""
        current = [means.get(key) for key in keys] + [utilities.get(key) for key in keys]
        return len(current) == len(self.views) and all(map(operator.is_, current, self.views))


class ContinualBackprop(Tool):
    """Continual backprop (Dohare et al., Nature 2024): generate-and-test over every hidden layer.

    After every optimizer step, for hidden unit i of a layer with activation h_i on the minibatch and
    outgoing weights W_out[:, i]:

        a_i += 1;  f_i = η·f_i + (1 − η)·mean_batch h_i;  f̂_i = f_i / (1 − η^{a_i})   (running mean, always)
        c_i = mean_batch |h_i| · Σ_k |W_out[k, i]|        contribution utility
              (mean-corrected: |h_i − f̂_i|)
        U_i = η·U_i + (1 − η)·c_i;  Û_i = U_i / (1 − η^{a_i})
        n = ρ · |{i : a_i > m}|;  replace the ``round(n)`` mature units with the lowest Û_i

    A unit with several outputs (CReLU, Fourier features: outputs i and n + i) has f and c traced per
    output and U_i the sum over its outputs (:meth:`unit_utility`); its age is shared.

    ``rounding``: ``carry`` rounds as round(n) = ⌊n + c⌋ with the fraction c carried to the next step;
    ``stochastic`` as ⌊n⌋ + 1 with probability n − ⌊n⌋ (numpy's global generator, saved in checkpoints),
    ⌊n⌋ otherwise — Dohare et al.'s RL code, which replaces one unit with probability n while n < 1 (its
    regime: 256 units × 1e-4) and truncates n ≥ 1.

    Replacing unit i (what the authors' code sets out to do): b_next += W_out[:, i]·f̂_i
    (``move_mean_to_bias``; their code zeroes f_i before this line, so it adds nothing:
    ``move_mean_to_bias=False``), then
    W_out[:, i] = 0 (:func:`transfer_to_bias`: the next layer keeps its mean input, and the output changes
    by W_out[:, i]·(h_i − f̂_i), not by the whole contribution W_out[:, i]·h_i); fresh incoming weights
    from the layer's own initialisation, bias 0, age 0, utility 0, f_i = 0; and, with
    ``reset_optimizer_state`` (the authors' supervised code, AdamGnT), the optimizer state of exactly its
    entries zeroed (:func:`reset_units`): runs then use an optimizer with one step count per weight
    (``ElementwiseAdam``, UPGD with ``per_element_steps``), whose zeroed step count restarts Adam's (and the
    utility trace's) bias correction for that weight. Their RL code steps plain torch Adam and resets
    nothing: ``reset_optimizer_state=False`` (the run's optimizer is then the configured one, unchanged).
    ρ is the replacement rate, m the maturity threshold in optimizer steps, η the decay rate. The paper's RL
    setting: ρ = 1e-4, m = 10 000, η = 0.99, with coupled L2 1e-4 and Adam β = (0.99, 0.99), stochastic
    rounding, no optimizer reset (preset ``cbp-paper``).
    """

    ROUNDINGS = ("carry", "stochastic")

    def __init__(
        self,
        replacement_rate: float = 1e-4,
        maturity: int = 10_000,
        decay_rate: float = 0.99,
        mean_corrected: bool = False,
        rounding: str = "carry",
        reset_optimizer_state: bool = True,
        move_mean_to_bias: bool = True,
    ) -> None:
        if not 0.0 <= replacement_rate <= 1.0:
            raise ValueError(f"replacement_rate must be in [0, 1], got {replacement_rate}")
        if maturity < 0:
            raise ValueError(f"maturity must be >= 0, got {maturity}")
        if not 0.0 <= decay_rate < 1.0:
            raise ValueError(f"decay_rate must be in [0, 1), got {decay_rate}")
        if rounding not in self.ROUNDINGS:
            raise ValueError(f"cbp.rounding must be one of {', '.join(self.ROUNDINGS)}, got {rounding!r}")
        self.replacement_rate = replacement_rate
        self.maturity = maturity
        self.decay_rate = decay_rate
        self.mean_corrected = mean_corrected
        self.rounding = rounding
        self.restarts_entry_state = reset_optimizer_state
        self.move_mean_to_bias = move_mean_to_bias
        self.recorder: ActivationRecorder | None = None
        # Per (network, layer): ages (host), utility U, running mean f, replacement carry, replaced count.
        self.ages: dict[tuple[str, int], np.ndarray] = {}
        self.utility: dict[tuple[str, int], torch.Tensor] = {}
        self.mean: dict[tuple[str, int], torch.Tensor] = {}
        self.carry: dict[tuple[str, int], float] = {}
        self.replaced: dict[tuple[str, int], int] = {}
        self._traces: dict[str, _NetworkTrace] = {}  # by network name: flat views of mean and utility

    def bind(self, model: BaseAlgorithm) -> None:
        """Start recording the hidden activations of every network of ``model`` (idempotent)."""
        if self.recorder is not None:
            return
        networks = policy_networks(model.policy)
        for network in networks:
            if not network.hidden:
                raise ValueError(f"continual backprop needs hidden layers; network {network.name!r} has none")
            for layer, linear in enumerate(network.hidden):
                key = (network.name, layer)
                if key not in self.ages:
                    units, outputs = linear.out_features, linear.out_features * network.width(layer)
                    self.ages[key] = np.zeros(units, dtype=np.int64)
                    self.utility[key] = torch.zeros(outputs, device=linear.weight.device)
                    self.mean[key] = torch.zeros(outputs, device=linear.weight.device)
                    self.carry[key], self.replaced[key] = 0.0, 0
        if self.restarts_entry_state:  # an unknown layout or one step count per tensor fails now, not later
            optimizer_state_keys(model.policy.optimizer)
            check_steps_per_weight(model.policy.optimizer, "continual backprop")
        self.recorder = ActivationRecorder(networks, model)

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        self.bind(model)

    @torch.no_grad()
    def after_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        if self.recorder is None:
            return
        for network in model.trainable_networks().values():
            # The utilities of every layer first, on the network the step produced; then the replacements.
            due = self._test(network)
            if not due:
                continue
            means = (
                {
                    layer: self.corrected_mean((network.name, layer))[network.outgoing_columns(layer, units)]
                    for layer, units in due.items()
                }
                if self.move_mean_to_bias
                else None
            )
            reset_layers(model, self, network, due, means)
            for layer, units in due.items():
                self._restart((network.name, layer), units)
                self.replaced[(network.name, layer)] += len(units)

    def _outputs_per_unit(self, key: LayerKey) -> int:
        """How many outputs (traced utilities and means) each unit of layer ``key`` has: 2 for CReLU."""
        return len(self.utility[key]) // len(self.ages[key])

    def _restart(self, key: LayerKey, units: torch.Tensor) -> None:
        """Fresh units of layer ``key``: age 0, utility 0, running mean 0 (of every output of theirs)."""
        self.ages[key][units.cpu().numpy()] = 0
        outputs = unit_outputs(units, len(self.ages[key]), self._outputs_per_unit(key))
        self.utility[key][outputs] = 0.0
        self.mean[key][outputs] = 0.0

    @torch.no_grad()
    def on_reinitialise(self, model: BaseAlgorithm, entries: Entries) -> None:
        """Units another tool (ReDo) has reset — the rows of a hidden layer's incoming weights — restart."""
        layer_of = {
            id(linear.weight): (network.name, layer)
            for network in model.trainable_networks().values()
            for layer, linear in enumerate(network.hidden)
        }
        for parameter, index in entries:
            key = layer_of.get(id(parameter))
            if key in self.ages and isinstance(index, torch.Tensor):
                self._restart(key, index)

    def corrected_mean(self, key: tuple[str, int]) -> torch.Tensor:
        """f̂ = f / (1 − η^a): the bias-corrected running mean of each output of layer ``key`` (0 for a unit
        of age 0; a CReLU unit's two outputs share its age)."""
        ages = torch.as_tensor(self.ages[key], dtype=self.mean[key].dtype, device=self.mean[key].device)
        ages = ages.repeat(self._outputs_per_unit(key))
        return self.mean[key] / (1 - self.decay_rate**ages).clamp_min(torch.finfo(ages.dtype).tiny)

    def _trace(self, network: Network) -> _NetworkTrace:
        """The flat running means and utilities of ``network``, laid out anew if missing or stale."""
        keys = [(network.name, layer) for layer in range(len(network.hidden))]
        trace = self._traces.get(network.name)
        if trace is None or not trace.holds(keys, self.mean, self.utility):
            trace = self._traces[network.name] = _NetworkTrace(keys, self.mean, self.utility)
        return trace

    def _test(self, network: Network) -> dict[int, torch.Tensor]:
        """Update the ages, mean activations and utilities of every layer of ``network`` (none before its
        first recorded training forward); the units to replace now, by layer."""
        outputs = [self.recorder.outputs.get((network.name, layer)) for layer in range(len(network.hidden))]
        if any(h is None for h in outputs):
            return {}
        eta, trace = self.decay_rate, self._trace(network)
        outputs = [h.reshape(-1, h.shape[-1]) for h in outputs]
        for layer, h in enumerate(outputs):
            self.ages[(network.name, layer)] += 1
            torch.mean(h, 0, out=trace.batch_means[layer])
            torch.sum(network.outgoing(layer).weight.abs(), 0, out=trace.weight_masses[layer])
        trace.mean.lerp_(trace.batch_mean, 1 - eta)
        nonnegative = [type(activation) in NONNEGATIVE_ACTIVATIONS for activation in network.activations]
        if all(nonnegative) and not self.mean_corrected:
            magnitude = trace.batch_mean  # |h| = h up to the sign of a zero, which a sum from +0 drops
        else:
            magnitude = trace.magnitude
            for layer, h in enumerate(outputs):
                if self.mean_corrected:
                    torch.mean(
                        (h - self.corrected_mean((network.name, layer))).abs(), 0, out=trace.magnitudes[layer]
                    )
                elif nonnegative[layer]:
                    trace.magnitudes[layer].copy_(trace.batch_means[layer])
                else:
                    torch.mean(h.abs(), 0, out=trace.magnitudes[layer])
        trace.utility.lerp_(magnitude.mul_(trace.weight_mass), 1 - eta)  # U ← η·U + (1 − η)·c
        due = {}
        for layer in range(len(outputs)):
            units = self._due((network.name, layer))
            if units is not None:
                due[layer] = units
        return due

    def _due(self, key: tuple[str, int]) -> torch.Tensor | None:
        """The mature units of layer ``key`` to replace now (the lowest corrected utility), or None."""
        ages, eta, utility = self.ages[key], self.decay_rate, self.unit_utility(key)
        mature = ages > self.maturity
        expected = self.replacement_rate * int(np.count_nonzero(mature))
        if self.rounding == "stochastic":
            count = math.floor(expected)
            if expected > count and np.random.random() < expected - count:
                count += 1
        else:
            self.carry[key] += expected
            count = math.floor(self.carry[key])
            self.carry[key] -= count
        if count < 1:
            return None
        correction = 1 - eta ** torch.as_tensor(ages, dtype=utility.dtype, device=utility.device)
        corrected = torch.where(
            torch.as_tensor(mature, device=utility.device), utility / correction, math.inf
        )
        return torch.topk(corrected, count, largest=False).indices

    def unit_utility(self, key: LayerKey) -> torch.Tensor:
        """U_i of every unit of layer ``key``: the sum of the traced utilities of its outputs (for CReLU
        and Fourier features U_i = U_{out i} + U_{out n+i}: a unit contributes through both)."""
        utility, multiplier = self.utility[key], self._outputs_per_unit(key)
        return utility if multiplier == 1 else utility.view(multiplier, -1).sum(0)

    def log(self, logger: Logger) -> None:
        by_network: dict[str, list[tuple[str, int]]] = {}
        for key in self.ages:
            by_network.setdefault(key[0], []).append(key)
        for name, keys in by_network.items():
            for key in keys:
                logger.record(f"cbp/{name}/layer{key[1]}/replaced", self.replaced[key])
            logger.record(
                f"cbp/{name}/mean_age", float(np.mean(np.concatenate([self.ages[k] for k in keys])))
            )
            logger.record(
                f"cbp/{name}/mean_utility", float(torch.cat([self.unit_utility(k) for k in keys]).mean())
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "ages": {k: v.copy() for k, v in self.ages.items()},
            "utility": {k: v.clone() for k, v in self.utility.items()},
            "mean": {k: v.clone() for k, v in self.mean.items()},
            "carry": dict(self.carry),
            "replaced": dict(self.replaced),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ages = {k: v.copy() for k, v in state["ages"].items()}
        self.utility = {k: v.clone() for k, v in state["utility"].items()}
        self.mean = {k: v.clone() for k, v in state["mean"].items()}
        self.carry = dict(state["carry"])
        self.replaced = dict(state["replaced"])


def _network_parameters(model: BaseAlgorithm) -> list[nn.Parameter]:
    return [p for network in model.trainable_networks().values() for p in network.parameters()]


class ShrinkPerturb(Tool):
    """Shrink & Perturb (Ash & Adams, NeurIPS 2020), each optimizer step or at each task switch.

    ``mode="step"``: after every optimizer step θ ← λ·θ + σ·ε, ε ~ N(0, 1) (``shrink`` = λ, ``sigma`` = σ).
    ``mode="switch"``: at every schedule switch (a change of task, never at the start of training)
    θ ← α·θ + (1 − α)·θ_fresh, θ_fresh a new random initialisation of the same policy (``alpha`` = α).

    Both act on the networks' weights only (``model.trainable_networks()``: a nested agent's frozen outer
    critics are left alone, and so is a Gaussian policy's ``log_std``).
    """

    MODES = ("step", "switch")

    def __init__(self, mode: str, shrink: float = 1.0, sigma: float = 0.0, alpha: float = 0.5) -> None:
        if mode not in self.MODES:
            raise ValueError(f"shrink_perturb.mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if not 0.0 <= shrink <= 1.0 or not 0.0 <= alpha <= 1.0 or sigma < 0:
            raise ValueError("shrink_perturb needs shrink and alpha in [0, 1] and sigma >= 0")
        self.mode, self.shrink, self.sigma, self.alpha = mode, shrink, sigma, alpha
        self.task: int | None = None  # the task of the last notification; None before the start

    @torch.no_grad()
    def after_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        if self.mode != "step":
            return
        params = _network_parameters(model)
        torch._foreach_mul_(params, self.shrink)
        if self.sigma:
            torch._foreach_add_(params, [torch.randn_like(p) for p in params], alpha=self.sigma)

    @torch.no_grad()
    def on_task_switch(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer, task: int) -> None:
        started, self.task = self.task is not None, task
        if self.mode != "switch" or not started:  # the first notification is the start, not a switch
            return
        policy = model.policy
        fresh = type(policy)(**policy._get_constructor_parameters()).to(policy.device)
        blended = {id(p) for p in _network_parameters(model)}
        current = dict(policy.named_parameters())
        for name, value in fresh.named_parameters():  # (an injected head's parameters have no fresh twin)
            if name in current and id(current[name]) in blended:
                current[name].lerp_(value, 1.0 - self.alpha)

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task = state["task"]


class L2Init(Tool):
    """L2-Init (Kumar et al., 2023), as a decoupled pull after every optimizer step:

        θ ← θ − lr·λ·(θ − θ_0)

    θ_0 the parameters at the start of training, lr the parameter group's current learning rate, λ = ``coef``
    (the gradient of λ/2·‖θ − θ_0‖², applied outside the adaptive step as AdamW applies weight decay).
    Entries another tool reinitialises (continual backprop, ReDo) take their fresh values as θ_0.
    """

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"l2_init.coef must be >= 0, got {coef}")
        self.coef = coef
        self.initial: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def after_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        name_of = parameter_names(model.policy)
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        for parameter in _network_parameters(model):
            initial = self.initial[name_of[id(parameter)]]
            parameter.sub_(parameter - initial, alpha=lr_of[id(parameter)] * self.coef)

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        if not self.initial:  # θ_0: the parameters before the first update
            self.initial = {name: p.detach().clone() for name, p in model.policy.named_parameters()}

    @torch.no_grad()
    def on_reinitialise(self, model: BaseAlgorithm, entries: Entries) -> None:
        """Reinitialised entries have new initial values: θ_0 ← their fresh values."""
        if not self.initial:
            return
        name_of = parameter_names(model.policy)
        for parameter, index in entries:
            name = name_of[id(parameter)]
            if name in self.initial:
                self.initial[name][index] = parameter[index]
            else:  # a parameter added since θ_0 was taken (plasticity injection's fresh head)
                self.initial[name] = parameter.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        return {"initial": {name: value.clone() for name, value in self.initial.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = {name: value.clone() for name, value in state["initial"].items()}


class ReDo(Tool):
    """ReDo (Sokar et al., ICML 2023): every ``every`` updates, reset the τ-dormant hidden units.

    On the observations of the last rollout, unit i of a layer is τ-dormant when
    s_i = E|h_i| / mean_j E|h_j| ≤ τ (E|h_i| summed over a CReLU or Fourier unit's two outputs:
    :func:`~nested_ac.metrics.dormant_mask`); each is reset as continual backprop replaces a unit (fresh
    incoming weights, zero outgoing weights, zeroed optimizer state: :func:`reset_units`).
    """

    restarts_entry_state = True

    def __init__(self, tau: float = 0.025, every: int = 10, probe_size: int = 1024) -> None:
        if tau < 0 or every <= 0:
            raise ValueError(f"redo needs tau >= 0 and every > 0, got tau={tau}, every={every}")
        self.tau, self.every, self.probe_size = tau, every, probe_size
        self.rollouts = 0
        self.reset: dict[str, int] = {}

    @torch.no_grad()
    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        if not self.rollouts:
            check_steps_per_weight(model.policy.optimizer, "ReDo")
        self.rollouts += 1
        if self.rollouts % self.every:
            return
        _, features = probe(model, self.probe_size)
        for network in model.trainable_networks().values():
            dormant = {}
            for layer, h in enumerate(network.hidden_outputs(features)):
                units = torch.nonzero(dormant_mask(h, self.tau, network.width(layer))).flatten()
                if len(units):
                    dormant[layer] = units
            reset_layers(model, self, network, dormant)
            count = sum(len(units) for units in dormant.values())
            self.reset[network.name] = self.reset.get(network.name, 0) + count

    def log(self, logger: Logger) -> None:
        for name, count in self.reset.items():
            logger.record(f"redo/{name}/reset", count)

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts": self.rollouts, "reset": dict(self.reset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts, self.reset = state["rollouts"], dict(state["reset"])
