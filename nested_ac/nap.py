"""Normalize-and-Project (Lyle, Zheng, Khetarpal, Martens, van Hasselt, Pascanu & Dabney, "Normalization and
effective learning rates in reinforcement learning", NeurIPS 2024)."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from torch import nn

from nested_ac.hooks import Tool
from nested_ac.networks import Network, parameter_names, policy_networks


class NormalizeAndProject(Tool):
    """Normalize-and-Project (NaP; Lyle et al., NeurIPS 2024): LayerNorm before every hidden nonlinearity
    (``network.layer_norm``, required) and, after every optimizer step, every hidden layer's weight matrix
    projected back onto the sphere of its initial norm:

        W_l ← W_l · ‖W_l^0‖_F / ‖W_l‖_F                           (every hidden Linear l)
        (γ_l, β_l) ← (γ_l, β_l) · ‖(γ_l^0, β_l^0)‖ / ‖(γ_l, β_l)‖  (``affine="joint"``; √n_l at init)
        W_out ← W_out · ‖W_out^0‖_F / ‖W_out‖_F                    (only with ``project_output``)

    W^0 the weights before the first update (recorded at the first rollout's end, as L2-Init records θ_0).
    A layer followed by LayerNorm is scale-invariant in W_l, so the projection leaves the function as it is
    and fixes the effective learning rate, which would otherwise decay as ‖W_l‖ grows (the paper's point).
    The Linear biases are not projected (the weights only, as the method is stated): with b_l ≠ 0 the
    projection therefore moves LN(W_l x + b_l) slightly. The joint projection of the LayerNorm's gain and
    bias keeps the function only for a homogeneous activation (ReLU, CReLU) followed by a further LayerNorm;
    ``affine="none"`` leaves them free. The heads are left alone by default: nothing normalises after them,
    so projecting them fixes the logits' and values' scale (with SB3's action-head gain 0.01 the policy could
    then hardly move from uniform). Acts on ``model.trainable_networks()`` (a nested agent's frozen critics
    are left as they are). Tags ``nap/<network>/growth``: the mean over the projected tensors of
    ‖W‖ / ‖W^0‖ just before the last projection (how far one step moved the norms).
    """

    AFFINE = ("joint", "none")

    def __init__(self, affine: str = "joint", project_output: bool = False) -> None:
        if affine not in self.AFFINE:
            raise ValueError(f"nap.affine must be one of {', '.join(self.AFFINE)}, got {affine!r}")
        self.affine, self.project_output = affine, project_output
        self.initial: dict[
            str, torch.Tensor
        ] = {}  # by group (a parameter's name, or a gain's name + "+bias")
        self.growth: dict[str, float] = {}

    def groups(self, model: BaseAlgorithm, networks: list[Network]) -> dict[str, list[nn.Parameter]]:
        """The tensors projected together, by the name of the group: each hidden weight (and head weight,
        with ``project_output``) alone, each LayerNorm's gain and bias together (``affine="joint"``)."""
        name_of = parameter_names(model.policy)
        groups: dict[str, list[nn.Parameter]] = {}
        for network in networks:
            if any(norm is None for norm in network.norms):
                raise ValueError(
                    f"Normalize-and-Project needs a LayerNorm in every hidden layer (network.layer_norm: "
                    f"true); network {network.name!r} has a layer without one"
                )
            weights = [linear.weight for linear in network.hidden]
            if self.project_output:
                weights.append(network.output.weight)
            groups.update({name_of[id(weight)]: [weight] for weight in weights})
            if self.affine == "joint":
                for norm in network.norms:
                    groups[name_of[id(norm.weight)] + "+bias"] = [norm.weight, norm.bias]
        return groups

    @torch.no_grad()
    def on_rollout_end(self, model: BaseAlgorithm) -> None:
        if not self.initial:  # the norms before the first update
            groups = self.groups(model, policy_networks(model.policy))
            self.initial = {name: _norm(tensors) for name, tensors in groups.items()}

    @torch.no_grad()
    def after_optimizer_step(self, model: BaseAlgorithm, optimizer: torch.optim.Optimizer) -> None:
        for network in model.trainable_networks().values():
            ratios = []
            for name, tensors in self.groups(model, [network]).items():
                norm = _norm(tensors)
                ratios.append(norm / self.initial[name])
                if norm > 0:
                    torch._foreach_mul_(tensors, self.initial[name] / norm)
            self.growth[network.name] = float(torch.stack(ratios).mean())

    def log(self, logger: Logger) -> None:
        for name, growth in self.growth.items():
            logger.record(f"nap/{name}/growth", growth)

    def state_dict(self) -> dict[str, Any]:
        return {"initial": {k: v.clone() for k, v in self.initial.items()}, "growth": dict(self.growth)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = {k: v.clone() for k, v in state["initial"].items()}
        self.growth = dict(state["growth"])


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The Euclidean norm of ``tensors`` together, ‖(t_1, t_2, …)‖."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))
