"""The machinery both UPGD forms share (Elsayed & Mahmood, ICLR 2024): per-weight utility traces, the global
scale η, the gate ``1 - ū``, the noise and its generator, and the flat layout of a common step. The two
optimizers are :class:`~nested_ac.optim.upgd.UPGD` (SGD form) and
:class:`~nested_ac.optim.adaptive_upgd.AdaptiveUPGD` (Adam form); the equations are in the package's
docstring (:mod:`nested_ac.optim`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from nested_ac.optim.common import (
    ParamsT,
    WithoutDynamoImport,
    add_scalar_,
    check_range,
    foreach_scalar,
    one_minus_power,
)
from nested_ac.optim.flat import FlatState, work_buffer


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


class Bucket:
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


class UtilityOptimizer(WithoutDynamoImport, Optimizer):
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
        check_range("lr", values["lr"], 0.0)
        check_range("weight_decay", values["weight_decay"], 0.0)
        check_range("sigma", values["sigma"], 0.0)
        check_range("beta_utility", values["beta_utility"], 0.0, 1.0)

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
        corrections = one_minus_power(group["beta_utility"], steps)
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
    def _buckets(self) -> tuple[list[Bucket], dict[float, list[Tensor]]]:
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
            add_scalar_(steps, 1.0)
            counts = iter([None] * len(steps))
        else:
            torch._foreach_add_(steps, torch.ones((), dtype=torch.float64))
            counts = iter([int(step.item()) for step in steps])
        buckets: list[Bucket] = []
        for group, params, states in stepping:
            by_step: dict[int | None, Bucket] = {}
            for p, state in zip(params, states, strict=True):
                step = next(counts)
                bucket = by_step.get(step)
                if bucket is None:
                    bucket = by_step[step] = Bucket(group, step)
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

    def _noise(self, buckets: list[Bucket]) -> list[list[Tensor] | None]:
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
        noisy: list[Bucket], generator: torch.Generator
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
        buckets: list[Bucket], noisy: list[Bucket], generator: torch.Generator
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
            torch._foreach_mul_(bucket.traces, foreach_scalar(beta, bucket.traces[0]))
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
                torch._foreach_mul_(bucket.params, foreach_scalar(decay, bucket.params[0]))
            self._update(bucket, gates, noise)
        if flat is not None:
            torch._foreach_copy_(flat.params, flat.weights)
        return loss

    def _flat_layout(self) -> _FlatUtilityLayout | None:
        """The flat layout for this step, with the gradients and weights copied in and the step counted (made
        anew if missing or stale); None where it does not apply: with per-element step counts, an empty
        group, a parameter whose state is not made yet, or where :meth:`FlatState.shared_step` says no."""
        params = [p for group in self.param_groups for p in group["params"]]
        states = [self.state.get(p, {}) for p in params]
        flat = self._flat
        if flat is None or not flat.holds(params, states):
            keys = (*self.state_tensor_keys, "step")
            count = None
            if not self.per_element_steps and all(group["params"] for group in self.param_groups):
                if all(key in state for state in states for key in keys):
                    count = FlatState.shared_step(params, states)
            flat = self._flat = None if count is None else _FlatUtilityLayout(self, states, count)
            if flat is None:
                return None
        flat.count_step()
        torch._foreach_copy_(flat.weights, flat.params)
        for bucket in flat.buckets:
            bucket.step = flat.count
        return flat

    def _update(self, bucket: Bucket, gates: list[Tensor] | None, noise: list[Tensor] | None) -> None:
        """``w ← w - lr·(...)`` for one bucket, after the weight decay; ``gates`` is ``1 - ū``.

        ``gates`` is None only for the non-protecting variant without noise; ``noise`` (ξ, which this
        method may overwrite) is None where σ = 0.
        """
        raise NotImplementedError


class _FlatUtilityLayout(FlatState):
    """A :class:`UtilityOptimizer`'s state laid out flat (:class:`FlatState`: every parameter of every
    group, its ``state_tensor_keys`` and a float64 ``step``), for steps where every parameter has a gradient
    and one shared step count (not ``per_element_steps``); ``weight`` a flat work buffer (``weights``: its
    views shaped like the parameters). Each group is one :class:`Bucket` whose "parameters", gradients and
    state are its runs of these flat tensors, so a step runs the same arithmetic on one tensor per group
    instead of one per parameter, then copies ``weight`` back into the parameters."""

    __slots__ = ("weight", "weights", "buckets")

    def __init__(self, optimizer: UtilityOptimizer, states: list[dict[str, Any]], count: int) -> None:
        groups = optimizer.param_groups
        params = [p for group in groups for p in group["params"]]
        super().__init__(params, states, optimizer.state_tensor_keys, count, torch.float64)
        self.weight, self.weights = work_buffer(params)
        sizes = [sum(p.numel() for p in group["params"]) for group in groups]
        runs = {
            name: tensor.split(sizes)
            for name, tensor in (*self.tensors.items(), ("w", self.weight), ("g", self.grad))
        }
        self.buckets = []
        for index, group in enumerate(groups):
            bucket = Bucket(group, count)
            bucket.params, bucket.grads = [runs["w"][index]], [runs["g"][index]]
            bucket.states = [{key: runs[key][index] for key in self.keys}]
            bucket.traces = bucket.state_list("utility_trace")
            self.buckets.append(bucket)
