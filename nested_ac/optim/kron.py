"""Kron: PSGD with Kronecker-factored preconditioners, heavyball's ``PSGDKron``, run eagerly.

Imported only where ``--optimizer kron`` is built: heavyball imports torch's compiler (``torch._dynamo``),
seconds that no other run pays.
"""

from __future__ import annotations

from typing import Any

import heavyball
import heavyball.utils
from torch import Tensor

from nested_ac.optim.common import ParamsT

# heavyball compiles its kernels with torch.compile by default; eager here (inductor on a CPU needs a C++
# toolchain and minutes per new shape). This is heavyball's process-wide switch.
heavyball.utils.compile_mode = None


class Kron(heavyball.PSGDKron):
    """PSGD (Li, "Preconditioned stochastic gradient descent", IEEE TNNLS 2018) with Kronecker-factored
    preconditioners, as heavyball's ``PSGDKron`` implements it (after Walters, Pooladzandi & Li's Kron).

    Each weight matrix W (m×n) with momentum M (EMA of the gradient with β1, bias-corrected) is stepped by

        W ← W − lr · Q_lᵀQ_l · M · Q_rᵀQ_r       (P = (Q_rᵀQ_r) ⊗ (Q_lᵀQ_l), the preconditioner)

    with Q_l (m×m) and Q_r (n×n) triangular factors (diagonal ones for a dimension over 2048 and for
    vectors such as biases) fitted on the Lie group of triangular matrices so that P ≈ E[ggᵀ]^(-1/2)
    (whitening): at each update of the preconditioner a random probe v ~ N(0, I) and the gradient
    (with momentum) give Q ← Q − η_Q·(∇ of Li's criterion)·Q, η_Q = 0.1. The preconditioner is updated
    with a probability of 1 for the first 1000 steps, then 0.999^(t−1000), down to 0.03 (heavyball's
    schedule, deterministic: an accumulated probability kept in the parameter groups), and the update is
    clipped by heavyball's trust region. ``weight_decay`` is decoupled. ``betas``: β1 of the momentum and
    heavyball's β2 of the preconditioner update; every other setting is heavyball's default.

    The random probes come from torch's global generator (which the run's checkpoint saves), so a
    resumed run continues exactly; the state (momentum, Q factors, step counts) is in ``state_dict()``, and
    :meth:`load_state_dict` gives it back in the dtypes it was saved in (torch's casts heavyball's float64
    step counts and lower bounds to the parameters' float32, and the resumed run would drift by rounding).

    The preconditioner couples every entry of a row and of a column: single entries cannot restart, so a
    tool that restarts single weights' optimizer state is refused (:attr:`entry_restart_refusal`).
    """

    entry_restart_refusal = (
        "--optimizer kron cannot restart single weights' optimizer state, which continual backprop "
        "(with cbp.reset_optimizer_state=true) and ReDo do: Kron's Kronecker-factored preconditioner "
        "couples every entry of a weight matrix's rows and columns. Set cbp.reset_optimizer_state=false "
        "(the units are reset, Kron's state kept) or use --optimizer adam, upgd or trac"
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """heavyball's ``load_state_dict``, every state tensor then in the dtype it was saved in."""
        super().load_state_dict(state_dict)
        saved_ids = [index for group in state_dict["param_groups"] for index in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for index, p in zip(saved_ids, params, strict=True):
            if index in state_dict["state"]:
                self.state[p] = _in_saved_dtypes(self.state[p], state_dict["state"][index])


def _in_saved_dtypes(loaded: Any, saved: Any) -> Any:
    """``loaded`` (a state as torch's ``load_state_dict`` cast it) with each tensor whose dtype differs from
    its counterpart in ``saved`` replaced by a copy of that counterpart, on ``loaded``'s device."""
    if isinstance(loaded, Tensor):
        return saved.to(device=loaded.device, copy=True) if loaded.dtype != saved.dtype else loaded
    if isinstance(loaded, dict):
        return {key: _in_saved_dtypes(value, saved[key]) for key, value in loaded.items()}
    if isinstance(loaded, list | tuple):
        return type(loaded)(_in_saved_dtypes(a, b) for a, b in zip(loaded, saved, strict=True))
    return loaded
