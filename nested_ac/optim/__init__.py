"""nested-ac's optimizers, one per module:

- :class:`~nested_ac.optim.upgd.UPGD` and :class:`~nested_ac.optim.adaptive_upgd.AdaptiveUPGD` — utility-based
  perturbed gradient descent (Elsayed & Mahmood, "Addressing Loss of Plasticity and Catastrophic Forgetting
  in Continual Learning", ICLR 2024), SGD and Adam forms, on the machinery they share
  (:mod:`nested_ac.optim.utility`);
- :class:`~nested_ac.optim.elementwise_adam.ElementwiseAdam` — Adam(W) with one step count per weight, for
  continual backprop (Dohare et al., "Loss of plasticity in deep continual learning", Nature 2024), whose
  replaced weights restart their optimizer state — step count and bias correction included — as a fresh
  optimizer would;
- :class:`~nested_ac.optim.flat_adam.FlatAdam` — torch's Adam stepped on flat tensors, for the fast PPO
  engine;
- :class:`~nested_ac.optim.trac.TRAC` — the parameter-free scale tuner around Adam of Muppidi, Zhang & Yang
  ("Fast TRAC: A Parameter-Free Optimizer for Lifelong Reinforcement Learning", NeurIPS 2024):
  θ = θ_ref + S_t·(θ^base − θ_ref), S_t from a sum of discounted erfi tuners;
- :class:`~nested_ac.optim.kron.Kron` — PSGD with Kronecker-factored preconditioners (Li, "Preconditioned
  stochastic gradient descent", 2018), heavyball's ``PSGDKron``; imported from ``nested_ac.optim.kron``
  only (heavyball imports torch's compiler).

Shared pieces: :mod:`nested_ac.optim.flat` (per-parameter state as views of one flat tensor per key) and
:mod:`nested_ac.optim.common` (the mixin that keeps torch's compiler unimported, range checks, foreach
helpers). Everything is importable from ``nested_ac.optim`` itself.

UPGD keeps, per weight, a trace of its first-order utility — how much the loss would rise if the weight
were set to zero — and scales every update by how *un*useful the weight is: useful weights are protected,
useless ones are perturbed with noise and so stay plastic. With ``g`` the gradient, ``w`` the weight, ``t``
the number of steps taken on that weight and ``β_u`` the utility decay:

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
"""

from typing import Any

import torch

from nested_ac.errors import ConfigError
from nested_ac.optim.adaptive_upgd import AdaptiveUPGD
from nested_ac.optim.elementwise_adam import ElementwiseAdam
from nested_ac.optim.flat import shaped_views
from nested_ac.optim.flat_adam import FlatAdam
from nested_ac.optim.trac import TRAC
from nested_ac.optim.upgd import UPGD

__all__ = [
    "UPGD",
    "AdaptiveUPGD",
    "ElementwiseAdam",
    "FlatAdam",
    "OptimizerSpec",
    "TRAC",
    "keeps_one_step_per_tensor",
    "shaped_views",
    "with_element_steps",
]

OptimizerSpec = tuple[type[torch.optim.Optimizer], dict[str, Any]]


def with_element_steps(spec: OptimizerSpec) -> OptimizerSpec:
    """``spec`` (an optimizer class and its keyword arguments) with one step count per weight: Adam(W)
    (torch's or :class:`FlatAdam`) becomes :class:`ElementwiseAdam` — AdamW's decoupled ``weight_decay``
    its ``weight_decay``, Adam's coupled one its ``l2`` — UPGD gets ``per_element_steps``; an optimizer
    with an ``entry_restart_refusal`` (Kron) is refused with a ConfigError that says it; any other optimizer
    (TRAC, which keeps one step count per weight itself, among them) is returned as it is."""
    optimizer_class, kwargs = spec
    refusal = getattr(optimizer_class, "entry_restart_refusal", None)  # Kron's
    if refusal is not None:
        raise ConfigError(refusal)
    if optimizer_class in (torch.optim.Adam, torch.optim.AdamW, FlatAdam):
        adam_kwargs = {key: kwargs[key] for key in ("betas", "eps") if key in kwargs}
        decay = "weight_decay" if optimizer_class is torch.optim.AdamW else "l2"
        if kwargs.get("weight_decay"):
            adam_kwargs[decay] = kwargs["weight_decay"]
        return ElementwiseAdam, adam_kwargs
    if issubclass(optimizer_class, (UPGD, AdaptiveUPGD)):
        return optimizer_class, {**kwargs, "per_element_steps": True}
    return spec


def keeps_one_step_per_tensor(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` bias-corrects every weight of a tensor by the tensor's one step count (torch's
    Adam and AdamW, :class:`FlatAdam`, UPGD without ``per_element_steps``): restarting single weights
    then cannot restart their bias correction."""
    if isinstance(optimizer, (UPGD, AdaptiveUPGD)):
        return not optimizer.per_element_steps
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
