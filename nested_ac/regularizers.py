"""Regularizers against loss of plasticity, through the one hook protocol:

- :class:`ParsevalRegularization` — λ·Σ_l ‖W_l W_lᵀ − s·I‖²_F on the hidden layers (Chung, Cherif, Meger &
  Precup, "Parseval regularization for continual reinforcement learning", NeurIPS 2024);
- :class:`WeightClipping` — every weight and bias of layer l clipped to [−κ·s_l, κ·s_l] after each step
  (Elsayed, Lan, Lyle & Mahmood, "Weight clipping for deep continual and reinforcement learning", RLC 2024);
- :class:`ChurnReduction` — C-CHAIN, the churn of the policy's outputs on a reference batch regularized away
  (Tang, Obando-Ceron, Castro, Courville & Berseth, "Mitigating plasticity loss in continual reinforcement
  learning by reducing churn", ICML 2025).

Parseval's and C-CHAIN's terms are part of the loss, as in the authors' code: their gradients are added
in ``before_gradient_clipping``, after PPO's backward pass and before the gradient-norm clipping, so the
clipping scales the whole gradient, theirs included. Both engines take them the same way (on the fast
engine every ``.grad`` is a view of the hand-written gradient's flat tensor, added to in place), and
neither changes how PPO's own gradient is computed: Parseval's gradient is analytic, C-CHAIN's comes from
autograd on its own reference batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from torch.distributions import Categorical, Normal

from nested_ac.hooks import Entries, Tool
from nested_ac.networks import Network
from nested_ac.plasticity import initialisation

# s of the Parseval penalty per initialisation (``nested_ac.plasticity.initialisation``): the squared row
# norm the layer starts near — g² = 2 for SB3's orthogonal hidden layers (gain √2, the authors' s), and
# fan_in times the entries' variance for LeCun-uniform (1) and PyTorch's default U(±1/√fan_in) (1/3).
PARSEVAL_SCALES = {"orthogonal": 2.0, "lecun_uniform": 1.0, "default": 1.0 / 3.0}


def _check(key: str, value: float, low: float, strict: bool) -> None:
    """A ValueError naming ``key`` unless ``value`` is a finite number above (``strict``) or from ``low``."""
    inside = value > low if strict else value >= low
    if not (math.isfinite(value) and inside):
        raise ValueError(f"{key} must be a finite number {'>' if strict else '>='} {low}, got {value}")


def _same(cached: tuple[Network, ...], networks: tuple[Network, ...]) -> bool:
    """Whether ``networks`` are the very objects of ``cached`` (the agent keeps its networks' objects while
    its policy and the set of networks tools may change stay the same)."""
    return len(cached) == len(networks) and all(a is b for a, b in zip(cached, networks, strict=True))


def parseval_residual(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """W Wᵀ − s·I for a layer's weight W (out × in): Parseval's residual, zero when W's rows are orthogonal
    with squared norm s."""
    gram = weight @ weight.T
    gram.diagonal().sub_(scale)
    return gram


class ParsevalRegularization(Tool):
    """Parseval regularization (Chung, Cherif, Meger & Precup, NeurIPS 2024).

    The loss gains, for every hidden layer l (``Network.hidden``: input and hidden-to-hidden layers, not the
    output heads) of every network tools may change::

        L_P = λ · Σ_l ‖W_l W_lᵀ − s·I‖²_F,        ∂L_P/∂W_l = 4λ · (W_l W_lᵀ − s·I) · W_l

    (biases are not regularized), the gradient computed as 4λ·(W_l·(W_lᵀ W_l) − s·W_l) (the same matrix,
    with the smaller Gram matrix for a first layer of few inputs). It is added to ``W.grad`` after PPO's
    backward pass and before the gradient-norm clipping (``before_gradient_clipping``): the authors add L_P
    to PPO's loss before ``backward`` and clip after, so the penalty's gradient is clipped with the loss's.
    λ = ``coef``; s = ``scale``, by default the initialisation's (:data:`PARSEVAL_SCALES`: 2 = g² for SB3's
    orthogonal hidden layers, the authors' s for their orthogonal init with gain √2).

    The authors' code multiplies λ by (64/width)² (their λ is tuned for 64 units); here λ is the
    coefficient itself. Left out of the paper's variants: the diagonal layers and the learnable input scale
    it adds to restore capacity in some of its runs (MetaWorld, quadruped; they change the network, and the
    penalty alone is the method on its gridworld and LunarLander), and its ablations (normalized rows,
    subgroups of units). Logs ``parseval/<network>/penalty``: λ·Σ_l ‖W_l W_lᵀ − s·I‖²_F of the network
    after the update. Keeps no state.
    """

    def __init__(self, coef: float, scale: float | None = None) -> None:
        _check("parseval.coef", coef, 0.0, strict=False)
        if scale is not None:
            _check("parseval.scale", scale, 0.0, strict=True)
        self.coef, self.scale = coef, scale
        self._networks: tuple[Network, ...] = ()  # the networks of the last step, and their s
        self._scale = 0.0
        self._layers: dict[str, list[torch.Tensor]] = {}  # the weights regularized since the last log

    @torch.no_grad()
    def before_gradient_clipping(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        networks = tuple(model.trainable_networks().values())
        if not _same(self._networks, networks):
            initial = PARSEVAL_SCALES[initialisation(model.policy)]
            self._networks, self._scale = networks, self.scale if self.scale is not None else initial
        alpha, shift = 4 * self.coef, -4 * self.coef * self._scale
        for network in networks:
            layers = [linear.weight for linear in network.hidden if linear.weight.grad is not None]
            if layers:  # none: e.g. a nested agent's outer critic in polyak mode, moved by averaging alone
                self._layers[network.name] = layers
            for weight in layers:
                weight.grad.addmm_(weight, weight.T @ weight, alpha=alpha).add_(weight, alpha=shift)

    @torch.no_grad()
    def log(self, logger: Logger) -> None:
        for name, layers in self._layers.items():
            penalty = sum(parseval_residual(weight, self._scale).square().sum() for weight in layers)
            logger.record(f"parseval/{name}/penalty", self.coef * float(penalty))
        self._layers = {}


def orthogonal_gain(network: Network, linear: nn.Linear) -> float:
    """The gain SB3's orthogonal initialisation gives ``linear`` of ``network``: √2 for hidden layers, 0.01
    for the action head, 1 for a value head."""
    if linear is network.output:
        return 0.01 if network.name == "actor" else 1.0
    return math.sqrt(2)


def initial_bound(init: str, network: Network, linear: nn.Linear) -> float:
    """s_l of weight clipping: the bound b of the uniform U(−b, b) whose variance b²/3 is that of one entry
    of ``linear``'s initial weights under ``init``: √(3/fan_in) for LeCun-uniform, 1/√fan_in for PyTorch's
    default (both uniform: exactly their bound), and g·√(3/max(fan_in, fan_out)) for orthogonal with gain g
    (an orthogonal matrix scaled by g has orthonormal rows or columns times g, so its entries' mean square is
    exactly g²/max(fan_in, fan_out))."""
    fan_out, fan_in = linear.weight.shape
    if init == "orthogonal":
        return orthogonal_gain(network, linear) * math.sqrt(3 / max(fan_in, fan_out))
    if init == "lecun_uniform":
        return math.sqrt(3 / fan_in)
    return 1 / math.sqrt(fan_in)


class WeightClipping(Tool):
    """Weight clipping (Elsayed, Lan, Lyle & Mahmood, RLC 2024).

    After every optimizer step (and after every tool that moves weights before it: UPGD's perturbed step,
    Shrink & Perturb, reset units), for every layer l of every network tools may change::

        θ ← clip(θ, −κ·s_l, κ·s_l)        for θ the weights and the bias of layer l

    κ = ``kappa``; s_l the bound of layer l's initial distribution (``bound="init"``,
    :func:`initial_bound`: exact for the uniform initialisations, the uniform bound of the same variance
    for SB3's orthogonal one, whose heads' small gains make their bounds small: 0.01·√(3/64) ≈ 0.002 for a
    64-unit action head) or 1/√fan_in whatever the initialisation (``bound="fan_in"``: what the authors'
    PPO code computes for its orthogonally initialised CleanRL networks). A bias is clipped with its layer's
    s_l (its initial value is 0), as in the authors' code; the output heads are clipped too unless
    ``heads`` is False (the authors' ``clip_last_layer``, on by default). A Gaussian policy's ``log_std``
    is no layer's and is left alone (the authors' loop over every parameter also clips it, with a bound
    from its own shape). Logs ``weight_clipping/<network>/clipped_fraction``: the fraction of the network's
    clipped parameters at their bound after the update (:meth:`log`). Keeps no state: the bounds follow from
    the configuration and the shapes.
    """

    BOUNDS = ("init", "fan_in")

    def __init__(self, kappa: float, bound: str = "init", heads: bool = True) -> None:
        _check("weight_clipping.kappa", kappa, 0.0, strict=True)
        if bound not in self.BOUNDS:
            raise ValueError(f"weight_clipping.bound must be one of {', '.join(self.BOUNDS)}, got {bound!r}")
        self.kappa, self.bound, self.heads = kappa, bound, heads
        # By network: its parameter ids and its (parameter, limit κ·s_l) pairs.
        self._limits: dict[str, tuple[tuple[int, ...], list[tuple[nn.Parameter, float]]]] = {}
        # The networks the last step clipped, and over all of them the parameters and limits (both signs).
        self._step: tuple[tuple[Network, ...], list[nn.Parameter], list[float], list[float]] | None = None

    def limits(self, model: BaseAlgorithm, network: Network) -> list[tuple[nn.Parameter, float]]:
        """(parameter, κ·s_l) for every parameter of ``network`` that is clipped."""
        ids = tuple(map(id, network.parameters()))
        cached = self._limits.get(network.name)
        if cached is None or cached[0] != ids:
            # ``fan_in``: 1/√fan_in, the bound of PyTorch's default initialisation, whatever the policy's.
            init = initialisation(model.policy) if self.bound == "init" else "default"
            pairs = []
            for linear in (*network.hidden, network.output) if self.heads else network.hidden:
                limit = self.kappa * initial_bound(init, network, linear)
                pairs += [(parameter, limit) for parameter in linear.parameters()]
            cached = self._limits[network.name] = (ids, pairs)
        return cached[1]

    @torch.no_grad()
    def after_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        networks = tuple(model.trainable_networks().values())
        if self._step is None or not _same(self._step[0], networks):
            pairs = [pair for network in networks for pair in self.limits(model, network)]
            limits = [limit for _, limit in pairs]
            self._step = (networks, [p for p, _ in pairs], limits, [-limit for limit in limits])
        _, parameters, upper, lower = self._step
        torch._foreach_clamp_max_(parameters, upper)
        torch._foreach_clamp_min_(parameters, lower)

    @torch.no_grad()
    def log(self, logger: Logger) -> None:
        """The fraction of each network's clipped parameters at their bound after the update: those the
        update's last step clipped, and any an earlier clip left there that the last step did not move."""
        for network in self._step[0] if self._step is not None else ():
            name, pairs = network.name, self._limits[network.name][1]
            at_bound = sum(int((p.abs() >= limit).sum()) for p, limit in pairs)
            fraction = at_bound / sum(p.numel() for p, _ in pairs)
            logger.record(f"weight_clipping/{name}/clipped_fraction", fraction)


def head_outputs(
    policy: ActorCriticPolicy, observations: torch.Tensor, values: bool
) -> tuple[bool, torch.Tensor, torch.Tensor | None]:
    """Whether the policy is categorical, its action head on ``observations`` (a categorical policy's
    normalised log-probabilities, a Gaussian's means) and, with ``values``, the critic's values; a
    ValueError for another action distribution."""
    distribution = policy.get_distribution(observations).distribution
    if not isinstance(distribution, Categorical | Normal):
        raise ValueError(
            "C-CHAIN supports Discrete (categorical) and Box (Gaussian) action spaces, not a "
            f"{type(distribution).__name__} policy"
        )
    categorical = isinstance(distribution, Categorical)
    head = distribution.logits if categorical else distribution.loc
    return categorical, head, policy.predict_values(observations).flatten() if values else None


class ChurnReduction(Tool):
    """C-CHAIN, continual churn approximated reduction (Tang, Obando-Ceron, Castro, Courville & Berseth,
    ICML 2025), for PPO.

    On every minibatch the loss gains the churn of the last optimizer step on a reference batch B_ref
    (``batch_size`` observations drawn at random from the current rollout, anew each step, independently of
    the update's minibatch)::

        L_C = λ_π · D_π + λ_V · D_V,   θ⁻ the parameters before the last optimizer step (a constant)
        D_π = E_{s∈B_ref} KL(π_θ⁻(·|s) ‖ π_θ(·|s))          categorical policy
        D_π = E_{s∈B_ref} mean_i (μ_θ(s)_i − μ_θ⁻(s)_i)²    Gaussian policy (its means)
        D_V = E_{s∈B_ref} (V_θ(s) − V_θ⁻(s))²                with ``value`` only

    Its gradient (autograd, on the reference batch) is added to the gradients after PPO's backward pass and
    before the gradient-norm clipping, as the authors add L_C to PPO's loss before ``backward``. The
    categorical D_π's gradient is the authors' cross-entropy −Σ_a π_θ⁻(a|s) log π_θ(a|s)'s; the KL is that
    less the constant H(π_θ⁻), so that D_π, like the Gaussian's, is 0 without churn and its scale is the
    churn's (the authors' Gaussian PPO measures it so).

    The coefficient adapts (the authors' PPO rule): after each update, once ``warmup`` updates of the task
    have passed, λ_π = β · mean|L_pg| / (mean D_π + 1e-8) over the last ``window`` updates of the task,
    L_pg the update's mean policy-gradient loss (``train/policy_gradient_loss``) and D_π the update's mean
    churn; β = ``target_scale`` (0: λ_π stays ``coef``). λ_V likewise against the value loss
    (``train/value_loss``). At every task switch λ returns to ``coef``, the running means restart and the
    first step has no reference, as the authors' code restarts its coefficient and its history of networks
    for each task. The authors take |L_pg| and the churn of the update's last minibatch; here both are the
    update's means. Their PPO regularizes the policy only: ``value`` (D_V) is an extension. Entries another
    tool reinitialises (continual backprop, ReDo) take their fresh values in θ⁻ (``on_reinitialise``), so
    the reset itself is not churn to undo.

    Costs two forward passes (one without a graph) and one backward pass on the reference batch per
    optimizer step, outside the agent's minibatch forward (no tool observes them). Logs
    ``cchain/policy_churn`` and ``cchain/policy_coef`` (and ``cchain/value_churn``, ``cchain/value_coef``
    with ``value``): the update's mean D and the coefficient its steps used.
    """

    def __init__(
        self,
        coef: float = 100.0,
        target_scale: float = 0.05,
        warmup: int = 10,
        window: int = 50,
        value: bool = False,
        batch_size: int | None = None,
    ) -> None:
        _check("cchain.coef", coef, 0.0, strict=True)
        _check("cchain.target_scale", target_scale, 0.0, strict=False)
        if warmup < 0 or window <= 0 or (batch_size is not None and batch_size <= 0):
            raise ValueError(
                f"cchain needs warmup >= 0, window > 0 and batch_size > 0 (null: ppo.batch_size); got "
                f"warmup={warmup}, window={window}, batch_size={batch_size}"
            )
        self.initial_coef, self.target_scale, self.warmup, self.window = coef, target_scale, warmup, window
        self.value, self.batch_size = value, batch_size
        self.terms = ("policy", "value") if value else ("policy",)
        self.coef = dict.fromkeys(self.terms, coef)  # λ by term
        self.history: dict[str, list[tuple[float, float]]] = {term: [] for term in self.terms}  # (|L|, D)
        self.updates_in_task = 0
        self.reference: list[torch.Tensor] | None = None  # θ⁻, in policy.parameters() order
        self._observations: torch.Tensor | None = None  # the current rollout's, flattened
        self._scratch: list[torch.Tensor] = []  # θ while θ⁻ is swapped in
        self._churn: dict[str, torch.Tensor] = {}  # D summed over the update's steps, by term
        self._steps = 0

    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        buffer = model.rollout_buffer
        observations = buffer.observations.reshape(-1, *buffer.obs_shape)
        self._observations = torch.as_tensor(observations, device=model.device).clone()
        if self.reference is None:  # an unsupported action space fails at the first rollout, not later
            with torch.no_grad():
                head_outputs(model.policy, self._observations[:1], values=False)

    def on_task_switch(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer, task: int) -> None:
        self.coef = dict.fromkeys(self.terms, self.initial_coef)
        self.history = {term: [] for term in self.terms}
        self.updates_in_task = 0
        self.reference = None

    @torch.no_grad()
    def on_reinitialise(self, model: BaseAlgorithm, entries: Entries) -> None:
        """Entries another tool has just reinitialised (continual backprop, ReDo) take their fresh values in
        θ⁻ too: the next step's churn is the optimizer's, not the reset's, which the reference would
        otherwise pull back toward the weights it replaced."""
        if self.reference is None:
            return
        position = {id(p): i for i, p in enumerate(model.policy.parameters())}
        for parameter, index in entries:
            self.reference[position[id(parameter)]][index] = parameter[index]

    def churn(self, policy: ActorCriticPolicy, observations: torch.Tensor) -> dict[str, torch.Tensor]:
        """D_π (and D_V) of ``policy`` now against the parameters in :attr:`reference` on ``observations``,
        with the graph of the current parameters."""
        parameters = list(policy.parameters())
        with torch.no_grad():  # the reference's outputs: θ⁻ swapped into the policy, then θ back, bit for bit
            if len(self._scratch) != len(parameters):
                self._scratch = [torch.empty_like(p) for p in parameters]
            torch._foreach_copy_(self._scratch, parameters)
            torch._foreach_copy_(parameters, self.reference)
            _, head_then, values_then = head_outputs(policy, observations, self.value)
            torch._foreach_copy_(parameters, self._scratch)
        categorical, head, values = head_outputs(policy, observations, self.value)
        if categorical:
            policy_churn = (head_then.exp() * (head_then - head)).sum(-1).mean()
        else:
            policy_churn = (head - head_then).square().mean()
        churn = {"policy": policy_churn}
        if self.value:
            churn["value"] = (values - values_then).square().mean()
        return churn

    def before_gradient_clipping(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        policy = model.policy
        parameters = list(policy.parameters())
        if self.reference is not None and self._observations is not None:
            size = min(self.batch_size or model.batch_size, len(self._observations))
            chosen = np.random.choice(len(self._observations), size, replace=False)
            churn = self.churn(policy, self._observations[torch.as_tensor(chosen, device=model.device)])
            loss = sum(self.coef[term] * value for term, value in churn.items())
            trainable = [p for p in parameters if p.requires_grad]
            gradients = torch.autograd.grad(loss, trainable, allow_unused=True)
            with torch.no_grad():
                for parameter, gradient in zip(trainable, gradients, strict=True):
                    if gradient is None:
                        continue
                    if parameter.grad is None:
                        parameter.grad = gradient
                    else:
                        parameter.grad.add_(gradient)
                for term, value in churn.items():
                    self._churn[term] = self._churn.get(term, 0.0) + value.detach()
            self._steps += 1
        with torch.no_grad():  # θ now is θ⁻ of the next step
            if self.reference is None or len(self.reference) != len(parameters):
                self.reference = [p.detach().clone() for p in parameters]
            else:
                torch._foreach_copy_(self.reference, parameters)

    def log(self, logger: Logger) -> None:
        """Record the update's churn, then adapt λ from the update's loss terms on ``logger``."""
        losses = {"policy": "train/policy_gradient_loss", "value": "train/value_loss"}
        for term, coef in self.coef.items():
            logger.record(f"cchain/{term}_coef", coef)
        if not self._steps:
            return
        self.updates_in_task += 1
        for term, total in self._churn.items():
            churn = float(total) / self._steps
            logger.record(f"cchain/{term}_churn", churn)
            loss = logger.name_to_value.get(losses[term])
            if loss is None:
                continue
            history = self.history[term]
            history.append((abs(float(loss)), churn))
            del history[: -self.window]
            if self.target_scale and self.updates_in_task >= self.warmup:
                scale, churn_mean = np.mean(history, axis=0)
                self.coef[term] = float(self.target_scale * scale / (churn_mean + 1e-8))
        self._churn, self._steps = {}, 0

    def state_dict(self) -> dict[str, Any]:
        reference = None if self.reference is None else [t.clone() for t in self.reference]
        return {
            "coef": dict(self.coef),
            "history": {term: list(history) for term, history in self.history.items()},
            "updates_in_task": self.updates_in_task,
            "reference": reference,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef = dict(state["coef"])
        self.history = {term: list(history) for term, history in state["history"].items()}
        self.updates_in_task = state["updates_in_task"]
        reference = state["reference"]
        self.reference = None if reference is None else [t.clone() for t in reference]
