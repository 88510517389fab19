"""UPGD: utility-based perturbed gradient descent (Elsayed & Mahmood, "Addressing Loss of Plasticity and
Catastrophic Forgetting in Continual Learning", ICLR 2024), in an SGD form and an Adam form.

Both optimizers keep, per weight, a trace of its first-order utility — how much the loss would rise if
the weight were set to zero — and scale every update by how *un*useful the weight is: useful weights are
protected, useless ones are perturbed with noise and so stay plastic. With ``g`` the gradient, ``w`` the
weight, ``t`` the number of steps taken on that weight and ``β_u`` the utility decay:

    u_t = -g ⊙ w                                   first-order utility
    U_t = β_u · U_{t-1} + (1 - β_u) · u_t           utility trace, U_0 = 0
    Û_t = U_t / (1 - β_u^t)                         bias-corrected
    η   = max of Û_t over every weight the optimizer holds, in every group (one scalar per step)
    ū   = sigmoid(Û_t / η)                          scaled utility in (0, 1); ū = 0.5 for every weight
                                                    wherever η ≤ 0 or is not finite (e.g. a zero init)
    ξ   ~ N(0, σ²), fresh each step, shaped like w

The step has no hidden factor 2 (the authors' reference code takes 2·lr: their PPO run with lr 3e-4
corresponds to lr 6e-4 here), and η is the maximum of the bias-corrected trace.

Implementation: a step works on lists of tensors with ``torch._foreach_*`` kernels, draws the noise of all
parameters with one call into a reused flat buffer, and applies the guard with ``torch.where``: nothing is
read back from an accelerator during a step (step counts are CPU tensors, as in ``torch.optim.Adam``, or,
with ``per_element_steps``, tensors shaped like the parameters). Where every parameter has a gradient and
all share one step count (the usual PPO step), the state tensors are views into one flat tensor per key and
the same arithmetic runs on one tensor per group — the same numbers, bit for bit, at a fraction of the
per-tensor overhead.

Also :class:`ElementwiseAdam`: Adam(W) with one step count per weight, for continual backprop (Dohare et
al., "Loss of plasticity in deep continual learning", Nature 2024), whose replaced weights restart their
optimizer state — step count and bias correction included — as a fresh optimizer would; and
:class:`FlatAdam`, torch's Adam stepped on flat tensors, for the fast PPO engine.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["UPGD", "AdaptiveUPGD", "ElementwiseAdam", "FlatAdam"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def _without_dynamo_import(name: str) -> Callable[..., Any]:
    """``torch.optim.Optimizer``'s method ``name`` (one torch marks with ``torch._disable_dynamo``), run
    unmarked while ``torch._dynamo`` has not been imported, torch's marked method once it has."""
    marked = getattr(Optimizer, name)
    unmarked = getattr(marked, "__wrapped__", marked)

    @functools.wraps(unmarked)
    def method(*args: Any, **kwargs: Any) -> Any:
        return (marked if "torch._dynamo" in sys.modules else unmarked)(*args, **kwargs)

    return method


class WithoutDynamoImport:
    """Mixin for a torch optimizer: ``add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict``
    without the import of ``torch._dynamo`` (torch's compiler) that their first call costs.

    torch marks these methods as never to be compiled, and the mark imports ``torch._dynamo`` on its first
    call only to apply itself: measured here ≈ 0.8 s at import and ≈ 0.3 s at exit, a sixth of a 300k-step
    training process that never compiles. While ``torch._dynamo`` has not been imported nothing can be
    compiling, so the methods run unmarked — the same code; once anything has imported it, torch's marked
    methods run.
    """

    add_param_group = _without_dynamo_import("add_param_group")
    zero_grad = _without_dynamo_import("zero_grad")
    state_dict = _without_dynamo_import("state_dict")
    load_state_dict = _without_dynamo_import("load_state_dict")


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    """ValueError unless ``low <= value`` (and ``value < high`` when ``high`` is given)."""
    inside = value >= low and (high is None or value < high)
    if not inside or math.isnan(value):
        interval = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def _scalar(value: float, like: Tensor) -> float | Tensor:
    """``value`` in the form the fastest ``torch._foreach_*`` kernel for tensors like ``like`` takes.

    On the CPU a foreach op with a Python scalar wraps it into a fresh tensor for every list element; a 0-d
    tensor of the same dtype is several times cheaper. CUDA's fused kernels take Python scalars directly.
    """
    return torch.full((), value, dtype=like.dtype) if like.device.type == "cpu" else value


def _add_scalar_(tensors: list[Tensor], value: float) -> None:
    """``tensors[i] += value`` in place (on the CPU through a broadcast 0-d tensor: no per-element wrap)."""
    if tensors[0].device.type == "cpu":
        torch._foreach_add_(tensors, [torch.full((), value, dtype=tensors[0].dtype)] * len(tensors))
    else:
        torch._foreach_add_(tensors, value)


def _one_minus_power(beta: float, steps: list[Tensor]) -> list[Tensor]:
    """``1 - β^t`` for every element ``t`` of the step-count tensors ``steps``, as new tensors."""
    corrections = torch._foreach_pow(beta, steps)
    torch._foreach_neg_(corrections)
    _add_scalar_(corrections, 1.0)
    return corrections


def _update_moments(
    exp_avg: list[Tensor], exp_avg_sq: list[Tensor], grads: list[Tensor], beta1: float, beta2: float
) -> None:
    """Adam's moments in place: ``m ← β1·m + (1-β1)·g``, ``v ← β2·v + (1-β2)·g²``."""
    torch._foreach_lerp_(exp_avg, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sq, _scalar(beta2, exp_avg_sq[0]))
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)


def _elementwise_corrected_moments(
    exp_avg: list[Tensor], exp_avg_sq: list[Tensor], steps: list[Tensor], group: dict[str, Any]
) -> tuple[list[Tensor], list[Tensor]]:
    """``m̂ = m/(1-β1^t)`` and ``√v̂ + ε = √v/√(1-β2^t) + ε`` with a step count ``t`` per element (new
    tensors): Adam's bias correction for weights that started (or restarted) at different steps."""
    beta1, beta2 = group["betas"]
    corrected = torch._foreach_div(exp_avg, _one_minus_power(beta1, steps))
    root_correction2 = _one_minus_power(beta2, steps)
    torch._foreach_sqrt_(root_correction2)
    denominator = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denominator, root_correction2)
    _add_scalar_(denominator, group["eps"])
    return corrected, denominator


def _check_adam_hyperparameters(values: dict[str, Any]) -> None:
    """ValueError naming the first Adam setting of ``values`` (lr, betas, eps, weight_decay) out of range."""
    _check_range("lr", values["lr"], 0.0)
    _check_range("weight_decay", values["weight_decay"], 0.0)
    betas = values["betas"]
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        _check_range(f"betas[{index}]", beta, 0.0, 1.0)
    _check_range("eps", values["eps"], 0.0)


def _seed_from_state(state: Tensor) -> int:
    """A deterministic 62-bit seed from a generator state saved on a device that is not available here."""
    digest = hashlib.sha256(state.detach().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _restore_generator(device: str | torch.device, state: Tensor) -> torch.Generator:
    """A generator on ``device`` in ``state``; if that device is not here, a CPU one seeded from ``state``."""
    try:
        generator = torch.Generator(device=device)
        generator.set_state(state.cpu())
        return generator
    except (RuntimeError, ValueError):
        return torch.Generator().manual_seed(_seed_from_state(state))


class _Bucket:
    """Parameters of one group that share every bias correction: those taking their ``step``-th step now,
    or, with per-element step counts (``step`` None), every parameter of the group with a gradient."""

    __slots__ = ("group", "step", "params", "grads", "states", "traces", "utilities")

    def __init__(self, group: dict[str, Any], step: int | None) -> None:
        self.group = group
        self.step = step
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.states: list[dict[str, Any]] = []
        self.traces: list[Tensor] = []
        # What the gate scales by η: the traces U (one correction per bucket) or Û (per-element corrections).
        self.utilities: list[Tensor] = []

    @property
    def utility_key(self) -> float:
        """The bias correction ``1 - β_u^t`` still to apply to :attr:`utilities` (1.0: already applied)."""
        return 1.0 if self.step is None else 1.0 - self.group["beta_utility"] ** self.step

    def state_list(self, key: str) -> list[Tensor]:
        return [state[key] for state in self.states]


class _UtilityOptimizer(WithoutDynamoImport, Optimizer):
    """Shared machinery of both UPGD forms: utility traces, the global scale η, the gate ``1 - ū``, the noise.

    Per parameter ``p``, ``state[p]`` holds ``step`` (a 0-d float64 CPU tensor, the number of steps taken
    on ``p``) and ``utility_trace`` (U, shaped like ``p``), plus what a subclass adds.
    ``per_parameter_state_keys`` names the state tensors shaped like the parameter, so plasticity tools can
    reset entries of them in place.

    ``per_element_steps=True`` keeps one step count per weight instead (``step`` shaped like ``p``, in
    ``p``'s dtype: exact up to 2^24 steps in float32) and bias-corrects every weight by its own count, so a
    tool that zeroes a weight's state entries — ``step`` among them — restarts that weight exactly as a fresh
    optimizer would (continual backprop, Dohare et al., Nature 2024). It costs a few elementwise operations
    per step; the two modes agree while no entry is reset.

    Noise: ``generator`` (a ``torch.Generator``, used as given and advanced by every step) or ``seed`` (an
    int: a private generator seeded with it); with neither, a private generator is seeded from torch's
    global generator, so ``torch.manual_seed`` makes a run reproducible. The generator's state is part of
    ``state_dict()`` and survives ``copy.deepcopy`` and pickling.
    """

    state_tensor_keys: tuple[str, ...] = ("utility_trace",)

    def __init__(
        self, params: ParamsT, defaults: dict[str, Any], generator: torch.Generator | None, seed: int | None
    ) -> None:
        defaults["per_element_steps"] = bool(defaults["per_element_steps"])
        self._check_hyperparameters(defaults)
        if generator is not None and seed is not None:
            raise ValueError("pass generator or seed, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        super().__init__(params, defaults)
        self._owns_generator = generator is None
        if generator is None:
            if seed is None:  # follow torch's global generator, so a seeded run is reproducible
                seed = int(torch.randint(0, 2**62, ()).item())
            device = self.param_groups[0]["params"][0].device
            generator = torch.Generator(device=device).manual_seed(int(seed))
        self.noise_generator: torch.Generator = generator
        # (id, shape) of the noisy parameters -> flat noise buffer, per-bucket segments, per-parameter views
        self._noise_buffers: dict[tuple[Any, ...], tuple[Tensor, list[Tensor], list[list[Tensor]]]] = {}
        self._flat: _FlatUtilityLayout | None = None

    @property
    def per_element_steps(self) -> bool:
        return self.defaults["per_element_steps"]

    @property
    def per_parameter_state_keys(self) -> tuple[str, ...]:
        """The state tensors shaped like each parameter (``step`` among them with per-element steps)."""
        return ("step", *self.state_tensor_keys) if self.per_element_steps else self.state_tensor_keys

    @staticmethod
    def _check_hyperparameters(values: dict[str, Any]) -> None:
        """ValueError naming the first hyperparameter in ``values`` (defaults or a group) out of range."""
        _check_range("lr", values["lr"], 0.0)
        _check_range("weight_decay", values["weight_decay"], 0.0)
        _check_range("sigma", values["sigma"], 0.0)
        _check_range("beta_utility", values["beta_utility"], 0.0, 1.0)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Torch's ``add_param_group``, with the group's own hyperparameters checked like the defaults."""
        super().add_param_group(param_group)
        try:
            self._check_hyperparameters(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise

    # --- state, copies, pickling -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Torch's optimizer state dict plus the noise generator's ``noise_generator`` (state) and
        ``noise_generator_device`` (device type)."""
        state = super().state_dict()
        state["noise_generator"] = self.noise_generator.get_state()
        state["noise_generator_device"] = self.noise_generator.device.type
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; the noise continues exactly where the saved optimizer's would have.

        A generator state saved on another kind of device than this optimizer's generator moves our own
        generator there if that device exists here; otherwise the generator is reseeded deterministically
        from the saved state.
        """
        state_dict = dict(state_dict)
        generator_state = state_dict.pop("noise_generator", None)
        generator_device = state_dict.pop("noise_generator_device", "cpu")
        super().load_state_dict(state_dict)
        for p, state in self.state.items():  # shared step counts live on the CPU, per-element ones with p
            if "step" in state:
                if self.per_element_steps:
                    state["step"] = state["step"].to(device=p.device, dtype=p.dtype)
                else:
                    state["step"] = torch.as_tensor(state["step"], dtype=torch.float64).cpu()
        self._noise_buffers, self._flat = {}, None
        if generator_state is None:
            return
        if generator_device == self.noise_generator.device.type:
            self.noise_generator.set_state(generator_state.cpu())
        elif self._owns_generator:  # e.g. saved on a GPU, loaded into a fresh optimizer built on the CPU
            device = self.param_groups[0]["params"][0].device
            target = device if device.type == generator_device else torch.device(generator_device)
            self.noise_generator = _restore_generator(target, generator_state)
        else:  # the caller's generator lives elsewhere: continue deterministically from the saved state
            self.noise_generator.manual_seed(_seed_from_state(generator_state))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["noise_generator"] = (self.noise_generator.device.type, self.noise_generator.get_state())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        saved = state.pop("noise_generator", None)
        super().__setstate__(state)
        # A copy or an unpickled optimizer owns its generator (it is no longer the caller's object).
        self._owns_generator = True
        self.noise_generator = _restore_generator(*saved) if saved is not None else torch.Generator()
        self._noise_buffers, self._flat = {}, None

    def _new_state(self, p: Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not self.per_element_steps:
            state["step"] = torch.zeros((), dtype=torch.float64)
        for key in self.per_parameter_state_keys:
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    # --- scaled utilities ------------------------------------------------------------------------------
    def _tracked(self, only_without_gradient: bool = False) -> dict[float, tuple[list[Tensor], list[Tensor]]]:
        """Every parameter with a utility trace (or only those without a gradient now), by the bias
        correction still to apply (``1 - β_u^t``; 1.0 for per-element steps, whose Û it gives):
        ``(params, traces or Û)``."""
        tracked: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or (only_without_gradient and p.grad is not None):
                    continue
                if self.per_element_steps:
                    params, utilities = tracked.setdefault(1.0, ([], []))
                    params.append(p)
                    utilities += self._corrected_utilities([state["utility_trace"]], [state["step"]], group)
                elif (step := int(state["step"].item())) > 0:
                    params, traces = tracked.setdefault(1.0 - group["beta_utility"] ** step, ([], []))
                    params.append(p)
                    traces.append(state["utility_trace"])
        return tracked

    @staticmethod
    def _corrected_utilities(
        traces: list[Tensor], steps: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        """Û = U / (1 - β_u^t) with a step count t per element (new tensors); 0 where t = 0 (a restarted
        entry that has not stepped yet, whose U is 0)."""
        corrections = _one_minus_power(group["beta_utility"], steps)
        torch._foreach_clamp_min_(corrections, torch.finfo(corrections[0].dtype).tiny)
        return torch._foreach_div(traces, corrections)

    @staticmethod
    def _divisors(traces_by_correction: dict[float, list[Tensor]]) -> dict[float, Tensor]:
        """Per bias correction ``c = 1 - β_u^t``, the 0-d divisor ``d_c`` with ``U / d_c = -Û / η``.

        ``d_c = -c·η`` with η = max over every trace of ``U / c``; ``d_c = -inf`` where η ≤ 0 or is not
        finite, so that ``U / d_c = 0`` and ū = 0.5 for every weight. ``c·η`` is computed as
        ``max over c' of max(U_c')·c/c'``, which for a single c is just the largest trace entry. Nothing is
        read back to the host.
        """
        corrections = list(traces_by_correction)
        maxima = [torch.stack(torch._foreach_max(traces_by_correction[c])).max() for c in corrections]
        if len(maxima) == 1:
            scaled = {corrections[0]: maxima[0]}
        else:
            stacked = torch.stack(maxima)
            others = torch.tensor(corrections, dtype=stacked.dtype, device=stacked.device)
            scaled = {c: (stacked * (c / others)).max() for c in corrections}
        return {c: torch.where(k > 0, -k, -math.inf) for c, k in scaled.items()}  # NaN > 0 is False

    def _gates(self, traces: list[Tensor], divisor: Tensor) -> list[Tensor]:
        """``1 - ū = sigmoid(-Û/η) = sigmoid(U / divisor)`` as new tensors (``divisor`` from ``_divisors``).

        The one place where the scaled utility ū enters a step and :meth:`scaled_utilities`. A subclass may
        override it, e.g. to fix ū (the tests force ū ≡ 0 this way to check the reductions to SGD/AdamW).
        A weight whose own trace is ±inf or NaN (its gradient or value has already overflowed) gets NaN.
        """
        gates = torch._foreach_div(traces, divisor)
        torch._foreach_sigmoid_(gates)
        return gates

    @torch.no_grad()
    def scaled_utilities(self) -> dict[Tensor, Tensor]:
        """The scaled utility ū = sigmoid(Û/η) of every weight, per parameter, from the current state.

        Uses the same global η and guard as :meth:`step` (ū = 0.5 everywhere where η ≤ 0 or is not finite)
        and changes nothing. Parameters that have not taken a step yet have no utility trace and are left
        out. Meant for logging, e.g. per network the mean ū, the fraction of weights with ū > 0.5 (protected
        more than perturbed) and a histogram.
        """
        tracked = self._tracked()
        if not tracked:
            return {}
        divisors = self._divisors({c: traces for c, (_, traces) in tracked.items()})
        utilities: dict[Tensor, Tensor] = {}
        for correction, (params, traces) in tracked.items():
            gates = self._gates(traces, divisors[correction])
            torch._foreach_neg_(gates)
            torch._foreach_add_(gates, 1.0)
            utilities.update(zip(params, gates, strict=True))
        return utilities

    # --- the step ----------------------------------------------------------------------------------
    def _buckets(self) -> tuple[list[_Bucket], dict[float, list[Tensor]]]:
        """Advance the step count of every parameter with a gradient and bucket them by (group, step), or by
        group with per-element step counts.

        Also returns, by the bias correction still to apply, the utility traces (per-element steps: Û) of
        the parameters that have one but no gradient now: η spans every weight the optimizer holds.
        """
        stepping: list[tuple[dict[str, Any], list[Tensor], list[dict[str, Any]]]] = []
        idle = False
        for group in self.param_groups:
            group_params = group["params"]
            params = [p for p in group_params if p.grad is not None]
            idle = idle or len(params) < len(group_params)
            if not params:
                continue
            states = [self.state[p] for p in params]
            if not all(states):
                states = [s if s else self._new_state(p) for p, s in zip(params, states, strict=True)]
            stepping.append((group, params, states))
        idle_utilities = (
            {key: utilities for key, (_, utilities) in self._tracked(True).items()} if idle else {}
        )
        if not stepping:
            return [], idle_utilities
        steps = [state["step"] for _, _, states in stepping for state in states]
        if self.per_element_steps:
            _add_scalar_(steps, 1.0)
            counts = iter([None] * len(steps))
        else:
            torch._foreach_add_(steps, torch.ones((), dtype=torch.float64))
            counts = iter([int(step.item()) for step in steps])
        buckets: list[_Bucket] = []
        for group, params, states in stepping:
            by_step: dict[int | None, _Bucket] = {}
            for p, state in zip(params, states, strict=True):
                step = next(counts)
                bucket = by_step.get(step)
                if bucket is None:
                    bucket = by_step[step] = _Bucket(group, step)
                    buckets.append(bucket)
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                bucket.params.append(p)
                bucket.grads.append(grad)
                bucket.states.append(state)
                bucket.traces.append(state["utility_trace"])
        return buckets, idle_utilities

    def _generator_for(self, device: torch.device) -> torch.Generator:
        """The noise generator; if it is ours and on another device, moved there (reseeded from itself)."""
        generator = self.noise_generator
        if generator.device != device and self._owns_generator:
            seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device).item())
            generator = self.noise_generator = torch.Generator(device=device).manual_seed(seed)
        return generator

    def _noise(self, buckets: list[_Bucket]) -> list[list[Tensor] | None]:
        """ξ ~ N(0, σ²) per bucket with σ > 0 (None for the others), all drawn by one call.

        The noise goes into a flat buffer whose per-parameter views are kept between steps (making views
        costs more than drawing into them); the buffer is overwritten by the next step's draw.
        """
        noisy = [bucket for bucket in buckets if bucket.group["sigma"] > 0]
        if not noisy:
            return [None] * len(buckets)
        params = [p for bucket in noisy for p in bucket.params]
        first = params[0]
        generator = self._generator_for(first.device)
        key = tuple((id(p), p.shape) for p in params)
        entry = self._noise_buffers.get(key)
        if entry is None or entry[0].device != first.device or entry[0].dtype != first.dtype:
            entry = self._new_noise_buffer(noisy, generator)
            if entry is None:
                return self._noise_unbuffered(buckets, noisy, generator)
            if len(self._noise_buffers) >= 8:
                self._noise_buffers.clear()
            self._noise_buffers[key] = entry
        flat, segments, views = entry
        if len(noisy) == 1:
            flat.normal_(0.0, noisy[0].group["sigma"], generator=generator)
        else:
            flat.normal_(generator=generator)
            for segment, bucket in zip(segments, noisy, strict=True):
                segment.mul_(bucket.group["sigma"])
        by_bucket = {id(bucket): bucket_views for bucket, bucket_views in zip(noisy, views, strict=True)}
        return [by_bucket.get(id(bucket)) for bucket in buckets]

    @staticmethod
    def _new_noise_buffer(
        noisy: list[_Bucket], generator: torch.Generator
    ) -> tuple[Tensor, list[Tensor], list[list[Tensor]]] | None:
        """A flat noise buffer with its per-bucket segments and per-parameter views; None if the
        parameters differ in device or dtype or live elsewhere than the generator."""
        first = noisy[0].params[0]
        params = [p for bucket in noisy for p in bucket.params]
        if first.device != generator.device or not first.is_floating_point():
            return None
        if any(p.device != first.device or p.dtype != first.dtype for p in params):
            return None
        sizes = [sum(p.numel() for p in bucket.params) for bucket in noisy]
        flat = torch.empty(sum(sizes), device=first.device, dtype=first.dtype)
        segments = list(flat.split(sizes))
        views = []
        for segment, bucket in zip(segments, noisy, strict=True):
            chunks = segment.split([p.numel() for p in bucket.params])
            views.append([chunk.view(p.shape) for chunk, p in zip(chunks, bucket.params, strict=True)])
        return flat, segments, views

    @staticmethod
    def _noise_unbuffered(
        buckets: list[_Bucket], noisy: list[_Bucket], generator: torch.Generator
    ) -> list[list[Tensor] | None]:
        """The noise of :meth:`_noise` for parameters of mixed devices/dtypes: drawn, then copied over."""
        sizes = [[p.numel() for p in bucket.params] for bucket in noisy]
        flat = torch.randn(sum(map(sum, sizes)), generator=generator, device=generator.device)
        noise: dict[int, list[Tensor]] = {}
        offset = 0
        for bucket, bucket_sizes in zip(noisy, sizes, strict=True):
            total = sum(bucket_sizes)
            segment = flat[offset : offset + total].mul_(bucket.group["sigma"])
            offset += total
            noise[id(bucket)] = [
                chunk.to(device=p.device, dtype=p.dtype).view(p.shape)
                for chunk, p in zip(segment.split(bucket_sizes), bucket.params, strict=True)
            ]
        return [noise.get(id(bucket)) for bucket in buckets]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One UPGD step for every parameter with a gradient; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flat = self._flat_layout()
        buckets, utilities_by_key = (flat.buckets, {}) if flat is not None else self._buckets()
        if not buckets:
            return loss
        for bucket in buckets:  # U ← β_u·U + (1 - β_u)·(-g ⊙ w), with w before this step
            beta = bucket.group["beta_utility"]
            torch._foreach_mul_(bucket.traces, _scalar(beta, bucket.traces[0]))
            torch._foreach_addcmul_(bucket.traces, bucket.grads, bucket.params, value=beta - 1.0)
            bucket.utilities = bucket.traces
            if bucket.step is None:  # per-element step counts: Û = U / (1 - β_u^t) now
                steps = bucket.state_list("step")
                bucket.utilities = self._corrected_utilities(bucket.traces, steps, bucket.group)
            utilities_by_key.setdefault(bucket.utility_key, []).extend(bucket.utilities)
        divisors = self._divisors(utilities_by_key)
        for bucket, noise in zip(buckets, self._noise(buckets), strict=True):
            group = bucket.group
            gates = None
            if group["protect"] or noise is not None:  # 1 - ū
                gates = self._gates(bucket.utilities, divisors[bucket.utility_key])
            if group["weight_decay"]:  # decoupled: w ← (1 - lr·λ)·w
                decay = 1.0 - group["lr"] * group["weight_decay"]
                torch._foreach_mul_(bucket.params, _scalar(decay, bucket.params[0]))
            self._update(bucket, gates, noise)
        if flat is not None:
            torch._foreach_copy_(flat.params, flat.weights)
        return loss

    def _flat_layout(self) -> _FlatUtilityLayout | None:
        """The flat layout for this step, with the gradients and weights copied in and the step counted (made
        anew if missing or stale); None where it does not apply: with per-element step counts, an empty
        group, a parameter whose state is not made yet, or where :meth:`_FlatState.shared_step` says no."""
        params = [p for group in self.param_groups for p in group["params"]]
        states = [self.state.get(p, {}) for p in params]
        flat = self._flat
        if flat is None or not flat.holds(params, states):
            keys = (*self.state_tensor_keys, "step")
            count = None
            if not self.per_element_steps and all(group["params"] for group in self.param_groups):
                if all(key in state for state in states for key in keys):
                    count = _FlatState.shared_step(params, states)
            flat = self._flat = None if count is None else _FlatUtilityLayout(self, states, count)
            if flat is None:
                return None
        flat.count_step()
        torch._foreach_copy_(flat.weights, flat.params)
        for bucket in flat.buckets:
            bucket.step = flat.count
        return flat

    def _update(self, bucket: _Bucket, gates: list[Tensor] | None, noise: list[Tensor] | None) -> None:
        """``w ← w - lr·(...)`` for one bucket, after the weight decay; ``gates`` is ``1 - ū``.

        ``gates`` is None only for the non-protecting variant without noise; ``noise`` (ξ, which this
        method may overwrite) is None where σ = 0.
        """
        raise NotImplementedError


class UPGD(_UtilityOptimizer):
    """UPGD, SGD form (Elsayed & Mahmood, "Addressing Loss of Plasticity and Catastrophic Forgetting in
    Continual Learning", ICLR 2024): perturb useless weights, protect useful ones.

    Per weight ``w`` with gradient ``g``, at its ``t``-th step, with decoupled weight decay λ:

        U ← β_u·U + (1 - β_u)·(-g ⊙ w),   Û = U / (1 - β_u^t)
        η = max of Û over every weight of every group,   ū = sigmoid(Û / η)   (ū = 0.5 if η ≤ 0 or ∞/NaN)
        ξ ~ N(0, σ²)
        protect=True  (the paper's UPGD):  w ← (1 - lr·λ)·w - lr·(g + ξ) ⊙ (1 - ū)
        protect=False (noise gated only):  w ← (1 - lr·λ)·w - lr·(g + ξ ⊙ (1 - ū))

    With σ = 0 and ū ≡ 0 it is SGD with decoupled weight decay. No factor 2 on the step.

    State per parameter ``p`` (``optimizer.state[p]``): ``step`` (0-d float64 CPU tensor, steps taken on
    ``p``; shaped like ``p`` with ``per_element_steps``, see :class:`_UtilityOptimizer`) and
    ``utility_trace`` (U, shaped like ``p``).

    Noise: pass ``generator`` (a ``torch.Generator``, used and advanced as given; on the parameters'
    device, else every draw is copied over) or ``seed``; with neither, the noise is seeded from torch's
    global generator. Same seed, same noise. ``state_dict()`` saves the generator's state.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        beta_utility: float = 0.999,
        sigma: float = 1e-3,
        protect: bool = True,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        per_element_steps: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            beta_utility=beta_utility,
            sigma=sigma,
            protect=bool(protect),
            per_element_steps=per_element_steps,
        )
        super().__init__(params, defaults, generator, seed)

    def _update(self, bucket: _Bucket, gates: list[Tensor] | None, noise: list[Tensor] | None) -> None:
        lr, params, grads = bucket.group["lr"], bucket.params, bucket.grads
        if bucket.group["protect"]:
            assert gates is not None
            if noise is not None:  # w -= lr·(g + ξ) ⊙ (1 - ū)
                torch._foreach_add_(noise, grads)
                torch._foreach_addcmul_(params, noise, gates, value=-lr)
            else:
                torch._foreach_addcmul_(params, grads, gates, value=-lr)
        else:  # w -= lr·(g + ξ ⊙ (1 - ū))
            torch._foreach_add_(params, grads, alpha=-lr)
            if noise is not None:
                assert gates is not None
                torch._foreach_addcmul_(params, noise, gates, value=-lr)


class AdaptiveUPGD(_UtilityOptimizer):
    """UPGD, Adam form (Elsayed & Mahmood, "Addressing Loss of Plasticity and Catastrophic Forgetting in
    Continual Learning", ICLR 2024; the form the authors use with PPO).

    Per weight ``w`` with gradient ``g``, at its ``t``-th step, with decoupled weight decay λ:

        U ← β_u·U + (1 - β_u)·(-g ⊙ w),   Û = U / (1 - β_u^t)
        η = max of Û over every weight of every group,   ū = sigmoid(Û / η)   (ū = 0.5 if η ≤ 0 or ∞/NaN)
        m ← β1·m + (1-β1)·g,   v ← β2·v + (1-β2)·g²,   m̂ = m/(1-β1^t),   v̂ = v/(1-β2^t)
        ξ ~ N(0, σ²)
        protect=True:   w ← (1 - lr·λ)·w - lr·[m̂ ⊙ (1 - ū) / (√v̂ + ε) + ξ ⊙ (1 - ū)]
        protect=False:  w ← (1 - lr·λ)·w - lr·[m̂ / (√v̂ + ε) + ξ ⊙ (1 - ū)]

    The noise is not divided by √v̂. With σ = 0 and ū ≡ 0 it is AdamW (Adam when λ = 0). No factor 2 on
    the step: the authors' PPO setting (their lr 3e-4, doubled in their code) is lr = 6e-4 here.

    State per parameter ``p`` (``optimizer.state[p]``): ``step`` (0-d float64 CPU tensor, steps taken on
    ``p``; shaped like ``p`` with ``per_element_steps``, which bias-corrects U, m and v of every weight by
    its own count t), ``utility_trace`` (U), ``exp_avg`` (m) and ``exp_avg_sq`` (v), shaped like ``p``.

    Noise: pass ``generator`` (a ``torch.Generator``, used and advanced as given; on the parameters'
    device, else every draw is copied over) or ``seed``; with neither, the noise is seeded from torch's
    global generator. Same seed, same noise. ``state_dict()`` saves the generator's state.
    """

    state_tensor_keys = ("utility_trace", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        beta_utility: float = 0.999,
        sigma: float = 1e-3,
        protect: bool = True,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        per_element_steps: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            beta_utility=beta_utility,
            sigma=sigma,
            protect=bool(protect),
            per_element_steps=per_element_steps,
        )
        super().__init__(params, defaults, generator, seed)

    @staticmethod
    def _check_hyperparameters(values: dict[str, Any]) -> None:
        _UtilityOptimizer._check_hyperparameters(values)
        _check_adam_hyperparameters(values)

    def _update(self, bucket: _Bucket, gates: list[Tensor] | None, noise: list[Tensor] | None) -> None:
        group, step, params, grads = bucket.group, bucket.step, bucket.params, bucket.grads
        (beta1, beta2), lr = group["betas"], group["lr"]
        exp_avg, exp_avg_sq = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        _update_moments(exp_avg, exp_avg_sq, grads, beta1, beta2)
        if step is None:  # per-element step counts: m̂/(√v̂ + ε) with both corrections per element
            exp_avg, denominator = _elementwise_corrected_moments(
                exp_avg, exp_avg_sq, bucket.state_list("step"), group
            )
            factor = 1.0
        else:  # m̂/(√v̂ + ε) = f · m/(√v + ε·√(1-β2^t)) with f = √(1-β2^t)/(1-β1^t): corrections in scalars
            root_correction2 = math.sqrt(1.0 - beta2**step)
            factor = root_correction2 / (1.0 - beta1**step)
            denominator = torch._foreach_sqrt(exp_avg_sq)
            _add_scalar_(denominator, group["eps"] * root_correction2)
        if group["protect"]:
            assert gates is not None
            if noise is not None:  # w -= lr·(f·m/d + ξ) ⊙ (1 - ū)
                torch._foreach_addcdiv_(noise, exp_avg, denominator, value=factor)
                torch._foreach_addcmul_(params, noise, gates, value=-lr)
            else:  # w -= lr·f·(m ⊙ (1 - ū))/d
                torch._foreach_mul_(gates, exp_avg)
                torch._foreach_addcdiv_(params, gates, denominator, value=-lr * factor)
        else:  # w -= lr·(f·m/d + ξ ⊙ (1 - ū))
            torch._foreach_addcdiv_(params, exp_avg, denominator, value=-lr * factor)
            if noise is not None:
                assert gates is not None
                torch._foreach_addcmul_(params, noise, gates, value=-lr)


class _CorrectionTable:
    """Adam's bias corrections ``-(1 - β1^t)`` and ``√(1 - β2^t)`` for t = 0, 1, 2, … (worked out in float64,
    kept in the parameters' dtype and device), looked up by step count: a step costs two lookups instead of
    two powers per weight. The table grows by whole chunks, each worked out alike, so an entry has the same
    bits however large the table has grown (a resumed run looks up what the uninterrupted run did)."""

    CHUNK = 4096

    def __init__(self, betas: tuple[float, float], like: Tensor) -> None:
        self.betas, self.like = betas, like
        self.minus_correction1, self.root_correction2 = like.new_empty(0), like.new_empty(0)

    def covering(self, max_step: int) -> tuple[Tensor, Tensor]:
        """The two tables, with entries for every step count up to ``max_step``."""
        while len(self.minus_correction1) <= max_step:
            start = len(self.minus_correction1)
            t = torch.arange(start, start + self.CHUNK, dtype=torch.float64)
            beta1, beta2 = self.betas
            minus_correction1 = torch.pow(beta1, t).sub_(1.0).to(self.like)
            root_correction2 = torch.pow(beta2, t).neg_().add_(1.0).sqrt_().to(self.like)
            self.minus_correction1 = torch.cat([self.minus_correction1, minus_correction1])
            self.root_correction2 = torch.cat([self.root_correction2, root_correction2])
        return self.minus_correction1, self.root_correction2


def shaped_views(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of consecutive runs of ``flat``, shaped like each tensor of ``like`` in turn."""
    return [view.view_as(t) for t, view in zip(like, flat.split([t.numel() for t in like]), strict=True)]


def flatten_state(params: Sequence[Tensor], states: Sequence[dict[str, Any]], key: str) -> Tensor:
    """One flat tensor of every state's ``key`` (zeros where a state has none yet), each state's ``key``
    replaced by its view of it: the values kept, the storage shared."""
    flat = torch.cat(
        [state.get(key, torch.zeros_like(p)).reshape(-1) for p, state in zip(params, states, strict=True)]
    )
    for state, view in zip(states, shaped_views(flat, params), strict=True):
        state[key] = view
    return flat


def _work_buffer(params: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """A flat buffer the size of ``params`` and its views shaped like them."""
    flat = params[0].new_empty(sum(p.numel() for p in params))
    return flat, shaped_views(flat, params)


class _FlatState:
    """The state tensors ``keys`` of ``params`` as views into one flat tensor per key (``tensors``), and the
    step count ``count`` they all share, each parameter's ``step`` a 0-d view into ``steps`` (in
    ``step_dtype``: float32 as torch's Adam keeps it, float64 as UPGD does); ``grad`` a flat work buffer
    (``grads``: its views shaped like the parameters). The flat layout of :class:`FlatAdam`'s groups and of
    UPGD's common step: a step does its arithmetic on one tensor per key, and a tool that zeroes entries
    through ``optimizer.state[p][key]`` zeroes them here."""

    __slots__ = ("params", "keys", "tensors", "steps", "count", "views", "grad", "grads")

    def __init__(
        self,
        params: list[Tensor],
        states: list[dict[str, Any]],
        keys: Sequence[str],
        count: int,
        step_dtype: torch.dtype,
    ) -> None:
        self.params, self.keys, self.count = list(params), tuple(keys), count
        self.tensors = {key: flatten_state(params, states, key) for key in self.keys}
        self.steps = torch.full((len(params),), float(count), dtype=step_dtype)
        for state, step in zip(states, self.steps.unbind(), strict=True):
            state["step"] = step
        self.views = [state[key] for state in states for key in (*self.keys, "step")]
        self.grad, self.grads = _work_buffer(params)

    @staticmethod
    def shared_step(params: list[Tensor], states: list[dict[str, Any]]) -> int | None:
        """The step count every one of ``params`` has taken (0 without state yet) if they can be laid out
        flat now — each with a dense gradient, all on one device in one dtype, one count — else None."""
        if (
            not params
            or any(p.grad is None or p.grad.is_sparse for p in params)
            or len({(p.device, p.dtype) for p in params}) > 1
        ):
            return None
        steps = {float(state["step"]) if "step" in state else 0.0 for state in states}
        return int(steps.pop()) if len(steps) == 1 else None

    def holds(self, params: list[Tensor], states: list[dict[str, Any]]) -> bool:
        """While ``params`` are the ones laid out here, each with a gradient, and their ``states`` still hold
        the views made here."""
        current = [state.get(key) for state in states for key in (*self.keys, "step")]
        return (
            len(params) == len(self.params)
            and all(map(operator.is_, params, self.params))
            and all(p.grad is not None for p in params)
            and all(map(operator.is_, current, self.views))
        )

    def count_step(self) -> None:
        """Copy the parameters' gradients into ``grad`` and count one step."""
        torch._foreach_copy_(self.grads, [p.grad for p in self.params])
        self.steps.add_(1.0)
        self.count += 1


class _FlatUtilityLayout(_FlatState):
    """A :class:`_UtilityOptimizer`'s state laid out flat (:class:`_FlatState`: every parameter of every
    group, its ``state_tensor_keys`` and a float64 ``step``), for steps where every parameter has a gradient
    and one shared step count (not ``per_element_steps``); ``weight`` a flat work buffer (``weights``: its
    views shaped like the parameters). Each group is one :class:`_Bucket` whose "parameters", gradients and
    state are its runs of these flat tensors, so a step runs the same arithmetic on one tensor per group
    instead of one per parameter, then copies ``weight`` back into the parameters."""

    __slots__ = ("weight", "weights", "buckets")

    def __init__(self, optimizer: _UtilityOptimizer, states: list[dict[str, Any]], count: int) -> None:
        groups = optimizer.param_groups
        params = [p for group in groups for p in group["params"]]
        super().__init__(params, states, optimizer.state_tensor_keys, count, torch.float64)
        self.weight, self.weights = _work_buffer(params)
        sizes = [sum(p.numel() for p in group["params"]) for group in groups]
        runs = {
            name: tensor.split(sizes)
            for name, tensor in (*self.tensors.items(), ("w", self.weight), ("g", self.grad))
        }
        self.buckets = []
        for index, group in enumerate(groups):
            bucket = _Bucket(group, count)
            bucket.params, bucket.grads = [runs["w"][index]], [runs["g"][index]]
            bucket.states = [{key: runs[key][index] for key in self.keys}]
            bucket.traces = bucket.state_list("utility_trace")
            self.buckets.append(bucket)


class _FlatAdamState:
    """One flat tensor each for ``step``, ``exp_avg`` and ``exp_avg_sq`` of some parameters (one device and
    dtype), whose per-parameter state tensors are views into them: a step does its arithmetic on three
    tensors, and a tool that zeroes entries through ``optimizer.state[p][key]`` zeroes them here. ``grad``
    and ``update`` are flat work buffers, with ``grads`` and ``updates`` their views shaped like the
    parameters; ``index``, ``correction1`` and ``denominator`` work buffers; ``max_step`` a bound on every
    step count (tools only lower them)."""

    __slots__ = (
        "params", "views", "step", "exp_avg", "exp_avg_sq", "grad", "grads", "update", "updates",
        "index", "correction1", "denominator", "max_step",
    )  # fmt: skip

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]]) -> None:
        self.params = params
        for key in ElementwiseAdam.per_parameter_state_keys:
            setattr(self, key, flatten_state(params, states, key))
        self.views = [state[key] for state in states for key in ElementwiseAdam.per_parameter_state_keys]
        self.grad, self.grads = _work_buffer(params)
        self.update, self.updates = _work_buffer(params)
        self.index = torch.empty_like(self.step, dtype=torch.long)
        self.correction1, self.denominator = torch.empty_like(self.step), torch.empty_like(self.step)
        self.max_step = int(self.step.max()) if len(self.step) else 0

    def holds(self, states: list[dict[str, Any]]) -> bool:
        """True while every state tensor of these parameters is still the view this layout made."""
        current = [state.get(key) for state in states for key in ElementwiseAdam.per_parameter_state_keys]
        return all(map(operator.is_, current, self.views))


class ElementwiseAdam(WithoutDynamoImport, Optimizer):
    """Adam (Kingma & Ba, ICLR 2015) with decoupled weight decay (AdamW, Loshchilov & Hutter, ICLR 2019)
    and one step count per weight, the optimizer continual backprop needs (Dohare et al., "Loss of
    plasticity in deep continual learning", Nature 2024).

    Per weight ``w`` with gradient ``g`` and its own step count ``t``:

        t ← t + 1,   m ← β1·m + (1-β1)·g,   v ← β2·v + (1-β2)·g²
        m̂ = m/(1-β1^t),   v̂ = v/(1-β2^t),   w ← (1 - lr·λ)·w - lr·m̂/(√v̂ + ε)

    torch's Adam keeps one ``t`` per tensor, so a weight whose state a plasticity tool zeroes at a late
    step keeps that step's bias correction: its first update is ≈ lr·(1-β1)/√(1-β2) instead of a fresh
    Adam's ≈ lr. Here ``step`` is a state tensor shaped like the weight, listed in
    ``per_parameter_state_keys`` with the moments, so zeroing a weight's entries restarts it exactly. While
    no entry is reset it equals ``torch.optim.AdamW`` (``torch.optim.Adam`` when λ = 0) up to rounding.
    Step counts are kept in the parameter's dtype (exact up to 2^24 steps in float32).

    Layout: the state tensors of the parameters of a group that share a device and dtype are views into
    one flat tensor per key, so a step costs a handful of operations on three tensors whatever the number
    of parameters; state replaced from outside (``load_state_dict``, assignment) is re-flattened, values
    kept, at the next step. The bias corrections are looked up by step count in a table worked out once
    in float64.
    """

    per_parameter_state_keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        _check_adam_hyperparameters(defaults)
        super().__init__(params, defaults)
        self._flat: dict[tuple[int, ...], _FlatAdamState] = {}  # by the ids of the parameters it holds
        self._corrections: dict[tuple[Any, ...], _CorrectionTable] = {}  # by betas, dtype and device

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Torch's ``add_param_group``, with the group's own hyperparameters checked like the defaults."""
        super().add_param_group(param_group)
        try:
            _check_adam_hyperparameters(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Torch's ``load_state_dict``; the step counts follow their parameter's device and dtype, and the
        state is flattened again (values kept) for the next step."""
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            state["step"] = state["step"].to(device=p.device, dtype=p.dtype)
        self._flat = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._flat, self._corrections = {}, {}

    def _flat_state(self, params: list[Tensor]) -> _FlatAdamState:
        """The flat state of ``params`` (one device and dtype), laid out anew if it is missing or stale."""
        states = [self.state[p] for p in params]
        key = tuple(map(id, params))
        flat = self._flat.get(key)
        if flat is None or not flat.holds(states):
            flat = self._flat[key] = _FlatAdamState(params, states)
        return flat

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step for every parameter with a gradient; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("ElementwiseAdam does not support sparse gradients")
                    by_kind.setdefault((p.device, p.dtype), []).append(p)
            for params in by_kind.values():
                self._step(group, self._flat_state(params))
        return loss

    def _step(self, group: dict[str, Any], flat: _FlatAdamState) -> None:
        """The step of the parameters of ``flat``, on the flat tensors."""
        params, (beta1, beta2) = flat.params, group["betas"]
        torch._foreach_copy_(flat.grads, [p.grad for p in params])
        grad = flat.grad
        flat.step.add_(1.0)
        flat.max_step += 1
        flat.exp_avg.lerp_(grad, 1.0 - beta1)
        flat.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        table = self._corrections.get((beta1, beta2, grad.dtype, grad.device))
        if table is None:
            table = self._corrections[(beta1, beta2, grad.dtype, grad.device)] = _CorrectionTable(
                (beta1, beta2), grad
            )
        minus_correction1, root_correction2 = table.covering(flat.max_step)
        flat.index.copy_(flat.step)
        torch.index_select(minus_correction1, 0, flat.index, out=flat.correction1)  # -(1 - β1^t)
        torch.index_select(root_correction2, 0, flat.index, out=flat.denominator)  # √(1 - β2^t)
        torch.sqrt(flat.exp_avg_sq, out=flat.update).div_(flat.denominator)
        denominator = torch.add(flat.update, group["eps"], out=flat.denominator)  # √v̂ + ε
        # -lr·m̂/(√v̂ + ε) = lr·m/(-(1 - β1^t))/(√v̂ + ε)
        torch.div(flat.exp_avg, flat.correction1, out=flat.update).div_(denominator).mul_(group["lr"])
        if group["weight_decay"]:  # decoupled: w ← (1 - lr·λ)·w
            decay = 1.0 - group["lr"] * group["weight_decay"]
            torch._foreach_mul_(params, _scalar(decay, params[0]))
        torch._foreach_add_(params, flat.updates)


class FlatAdam(WithoutDynamoImport, torch.optim.Adam):
    """``torch.optim.Adam`` (Kingma & Ba, ICLR 2015) — the same update, state and checkpoints — stepped on
    one flat tensor per state key instead of one tensor per parameter. With ``t`` the group's step count:

        m ← β1·m + (1-β1)·g,   v ← β2·v + (1-β2)·g²,   w ← w - lr/(1-β1^t) · m/(√v/√(1-β2^t) + ε)

    For a network of a dozen small tensors, torch's per-tensor work (even its fused kernel's) costs several
    times the arithmetic; here a step is a handful of operations on flat tensors. Each parameter's
    ``exp_avg``, ``exp_avg_sq`` and ``step`` are views into them (so tools and ``state_dict`` see torch's
    layout); state replaced from outside (``load_state_dict``) is re-flattened, values kept, at the next
    step. A group without any gradient is skipped, as torch skips it; where this layout does not cover a
    group (weight decay, amsgrad, maximize, differentiable or capturable, sparse gradients or only some
    missing, mixed devices or dtypes, unequal step counts), the step is torch's own.
    """

    per_parameter_state_keys = ("exp_avg", "exp_avg_sq")  # torch Adam's; zeroing entries zeroes flat state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._flat: dict[int, _FlatAdamGroup] = {}

    def __init__(self, params: ParamsT, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._flat = {}  # by group index

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        stepped = [
            (group, self._flat_group(index, group))
            for index, group in enumerate(self.param_groups)
            if any(p.grad is not None for p in group["params"])  # torch steps no parameter without one
        ]
        if closure is not None or any(flat is None for _, flat in stepped):
            return super().step(closure)
        for group, flat in stepped:
            beta1, beta2 = group["betas"]
            exp_avg, exp_avg_sq = flat.tensors["exp_avg"], flat.tensors["exp_avg_sq"]
            flat.count_step()
            exp_avg.lerp_(flat.grad, 1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(flat.grad, flat.grad, value=1.0 - beta2)
            correction1, root_correction2 = 1.0 - beta1**flat.count, math.sqrt(1.0 - beta2**flat.count)
            denominator = torch.sqrt(exp_avg_sq, out=flat.update).div_(root_correction2).add_(group["eps"])
            torch.div(exp_avg, denominator, out=flat.update).mul_(-group["lr"] / correction1)
            torch._foreach_add_(flat.params, flat.updates)
        return None

    def _flat_group(self, index: int, group: dict[str, Any]) -> _FlatAdamGroup | None:
        """The flat layout of group ``index``, made anew if missing or stale; None where it does not apply."""
        params = group["params"]
        states = [self.state[p] for p in params]
        flat = self._flat.get(index)
        if flat is not None and flat.holds(params, states):
            return flat
        self._flat.pop(index, None)
        if group["weight_decay"] or any(
            group[key] for key in ("amsgrad", "maximize", "differentiable", "capturable")
        ):
            return None
        count = _FlatState.shared_step(params, states)
        if count is None:
            return None
        self._flat[index] = flat = _FlatAdamGroup(params, states, count)
        return flat


class _FlatAdamGroup(_FlatState):
    """A :class:`FlatAdam` group's state as a :class:`_FlatState` (``exp_avg``, ``exp_avg_sq``, and a float32
    ``step``), with a second flat work buffer ``update`` (``updates``: its views shaped like the
    parameters)."""

    __slots__ = ("update", "updates")

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]], count: int) -> None:
        super().__init__(params, states, ("exp_avg", "exp_avg_sq"), count, torch.float32)
        self.update, self.updates = _work_buffer(params)
