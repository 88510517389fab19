"""From a run configuration to the objects it describes: the agent, its optimizer and its plasticity tools.

The one module that reads :class:`~nested_ac.config.RunConfig` on behalf of agents and tools. Agents
(``nested_ac.agents``) take plain keyword arguments, as Stable-Baselines3's algorithms do; each agent is
registered in :data:`~nested_ac.registry.AGENTS` with the function that makes its keyword arguments, and
each plasticity tool in :data:`~nested_ac.registry.TOOLS` with its config section and builder
(:class:`~nested_ac.registry.ToolSpec`). Importing this module registers the built-in agents and tools; a
new tool is its own module plus one ``TOOLS.register`` call (docs/write-your-own-tool.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

import nested_ac.optimizers  # noqa: F401  (registers the optimizers)
from nested_ac.agents import ContinualPPO, NestedPPO
from nested_ac.agents.ppo import engine_optimizer
from nested_ac.config import (
    CBPConfig,
    CChainConfig,
    DiagnosticsConfig,
    InjectConfig,
    L2InitConfig,
    NaPConfig,
    NCLConfig,
    OptimizerConfig,
    ParsevalConfig,
    ProjectionConfig,
    ReDoConfig,
    ResetConfig,
    RunConfig,
    ShrinkPerturbConfig,
    SPGConfig,
    WeightClippingConfig,
    import_plugins,
)
from nested_ac.diagnostics import Diagnostics, TracScaleLogger, UtilityLogger
from nested_ac.errors import ConfigError, unknown_choice
from nested_ac.forgetting import GradientProjection, NaturalContinualLearning, SoftMasking
from nested_ac.hooks import Tool
from nested_ac.layers import CReLU, Fourier, width_multiplier
from nested_ac.nap import NormalizeAndProject
from nested_ac.optimizers import OptimizerSpec
from nested_ac.plasticity import ContinualBackprop, L2Init, ReDo, ShrinkPerturb
from nested_ac.registry import AGENTS, OPTIMIZERS, TOOLS, AgentSpec, ToolSpec
from nested_ac.regularizers import ChurnReduction, ParsevalRegularization, WeightClipping
from nested_ac.structural import LayerReset, PlasticityInjection

ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "leaky_relu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "gelu": torch.nn.GELU,
    "crelu": CReLU,
    "fourier": Fourier,
}


def enabled_tools(config: RunConfig) -> list[ToolSpec[Any]]:
    """The registered tools ``config`` switches on, in registration order (the order their hooks run)."""
    return [entry.target for entry in TOOLS if entry.target.enabled(config.section(entry.target.section))]


def build_tools(config: RunConfig) -> list[Tool]:
    """The plasticity tools of a run of ``config``; a ConfigError for an out-of-range setting."""
    try:
        return [spec.build(config.section(spec.section)) for spec in enabled_tools(config)]
    except ValueError as error:
        raise ConfigError(str(error)) from None


def optimizer_spec(config: RunConfig) -> OptimizerSpec:
    """The run's optimizer class and kwargs, as ``--optimizer`` names them (the agent gives the optimizer
    one step count per weight when a tool resets units: ``ContinualPPO._setup_model``)."""
    return OPTIMIZERS.get(config.optimizer.name)(config.optimizer)


def policy_kwargs(config: RunConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for the configured networks and optimizer (the class the engine steps with)."""
    network = config.network
    if network.activation not in ACTIVATIONS:
        raise unknown_choice("activation", network.activation, ACTIVATIONS)
    optimizer_class, optimizer_kwargs = optimizer_spec(config)
    optimizer_class = engine_optimizer(config.ppo.engine, optimizer_class)
    try:  # the optimizer's own range checks, before anything is built or written
        optimizer_class([torch.zeros(1, requires_grad=True)], lr=config.ppo.learning_rate, **optimizer_kwargs)
    except ValueError as error:
        raise ConfigError(f"optimizer {config.optimizer.name!r}: {error}") from None
    kwargs = {
        "net_arch": {"pi": list(network.actor), "vf": list(network.critic)},
        "activation_fn": ACTIVATIONS[network.activation],
        "init": network.init,
        "optimizer_class": optimizer_class,
        "optimizer_kwargs": optimizer_kwargs,
    }
    if network.layer_norm:
        kwargs["layer_norm"] = True
    return kwargs


def ppo_kwargs(config: RunConfig) -> dict[str, Any]:
    """:class:`~nested_ac.agents.ContinualPPO`'s keyword arguments for ``config``."""
    return {
        **dataclasses.asdict(config.ppo),
        "policy_kwargs": policy_kwargs(config),
        "seed": config.seed,
        "device": config.device,
        "verbose": 0,
    }


def sb3_ppo_kwargs(config: RunConfig) -> dict[str, Any]:
    """Plain ``stable_baselines3.PPO``'s keyword arguments for ``config``, to compare with Stable-Baselines3:
    :func:`ppo_kwargs` without what only ContinualPPO takes. A ConfigError where ``config`` asks for what
    SB3's PPO cannot do (whole-batch advantages, no gradient clipping, LeCun-uniform initialisation)."""
    ppo = config.ppo
    if (
        ppo.normalize_advantage_over != "minibatch"
        or ppo.max_grad_norm is None
        or config.network.init != "orthogonal"
        or config.network.layer_norm
        or width_multiplier(ACTIVATIONS.get(config.network.activation, torch.nn.ReLU)) != 1
    ):
        raise ConfigError(
            "Stable-Baselines3's PPO normalises advantages per minibatch, clips the gradient norm, "
            "initialises orthogonally and builds Linear → activation MLPs (no LayerNorm, one output per "
            "unit); this configuration asks otherwise"
        )
    kwargs = {
        key: value
        for key, value in ppo_kwargs(config).items()
        if key not in ("engine", "normalize_advantage_over")
    }
    kwargs["policy_kwargs"] = {key: value for key, value in kwargs["policy_kwargs"].items() if key != "init"}
    return kwargs


def nested_ppo_kwargs(config: RunConfig) -> dict[str, Any]:
    """:class:`~nested_ac.agents.NestedPPO`'s keyword arguments: PPO's and the ``nested`` section's."""
    nested = config.nested
    if nested.freeze_outer_after is not None and nested.freeze_outer_after > config.steps:
        raise ConfigError(
            f"nested.freeze_outer_after must be within the run (0 … steps = {config.steps}), "
            f"got {nested.freeze_outer_after}"
        )
    return {
        **ppo_kwargs(config),
        "levels": nested.levels,
        "kappa": nested.kappa,
        "lr_ratio": nested.lr_ratio,
        "mode": nested.mode,
        "tau": nested.tau,
        "freeze_outer_after": nested.freeze_outer_after,
        "outer_net_arch": nested.critic,
    }


def build_agent(config: RunConfig, env: VecEnv) -> BaseAlgorithm:
    """The agent of a run of ``config`` on ``env``, with its plasticity tools; a ConfigError for bad input."""
    import_plugins(config.plugins)
    agent = AGENTS.get(config.agent)
    tools = build_tools(config)
    return agent.cls("MlpPolicy", env, tools=tools, **agent.kwargs(config))


AGENTS.register(
    "ppo",
    "PPO (Stable-Baselines3) with separate ReLU actor and critic MLPs",
    AgentSpec(ContinualPPO, ppo_kwargs),
)
AGENTS.register(
    "nested-ppo",
    "PPO with K nested critics, each outer one a slowly moving learned loss for the inner (nested.*)",
    AgentSpec(NestedPPO, nested_ppo_kwargs),
)

TOOLS.register(
    "diagnostics",
    "dormant units, srank, weight size, distance from init per network, every N rollouts (diagnostics.*)",
    ToolSpec(
        "diagnostics",
        DiagnosticsConfig,
        Diagnostics,
        enabled=lambda d: d.every > 0,
        build=lambda d: Diagnostics(d.every, d.probe_size, d.tau, d.delta),
        charts={
            "dormant fraction per network": "plasticity/.*/dormant",
            "srank per network": "plasticity/.*/srank",
            "weight size (mean |w|) per network": "plasticity/.*/weight_mean_abs",
            "distance from the initial weights": "plasticity/.*/dist_from_init",
            "policy entropy": "plasticity/policy_entropy",
        },
        category="plasticity",
        changes_training=False,
    ),
)
TOOLS.register(
    "upgd-utility",
    "UPGD's scaled utilities per network, every N updates (optimizer.log_every, with a UPGD optimizer)",
    ToolSpec(
        "optimizer",
        OptimizerConfig,
        UtilityLogger,
        enabled=lambda o: o.name.startswith("upgd") and o.log_every > 0,
        build=lambda o: UtilityLogger(o.log_every),
        charts={
            "UPGD: mean scaled utility per network": "upgd/.*/utility_mean",
            "UPGD: fraction of weights with utility > 0.5": "upgd/.*/frac_above_half",
        },
        changes_training=False,
    ),
)
TOOLS.register(
    "cbp",
    "continual backprop (Dohare et al., 2024): replace low-utility hidden units (cbp.*, --cbp)",
    ToolSpec(
        "cbp",
        CBPConfig,
        ContinualBackprop,
        enabled=lambda c: c.enabled,
        build=lambda c: ContinualBackprop(
            c.replacement_rate,
            c.maturity,
            c.decay_rate,
            c.mean_corrected,
            c.rounding,
            c.reset_optimizer_state,
            c.move_mean_to_bias,
        ),
        charts={"CBP: units replaced per layer": "cbp/.*/replaced", "CBP: mean unit age": "cbp/.*/mean_age"},
    ),
)
TOOLS.register(
    "shrink-perturb",
    "Shrink & Perturb (Ash & Adams, 2020): each step or at each task switch (shrink_perturb.*)",
    ToolSpec(
        "shrink_perturb",
        ShrinkPerturbConfig,
        ShrinkPerturb,
        enabled=lambda s: s.mode != "off",
        build=lambda s: ShrinkPerturb(s.mode, s.shrink, s.sigma, s.alpha),
    ),
)
TOOLS.register(
    "l2-init",
    "L2-Init (Kumar et al., 2023): a pull toward the initial weights (l2_init.coef)",
    ToolSpec("l2_init", L2InitConfig, L2Init, enabled=lambda c: bool(c.coef), build=lambda c: L2Init(c.coef)),
)
TOOLS.register(
    "redo",
    "ReDo (Sokar et al., 2023): reset τ-dormant units every N updates (redo.*)",
    ToolSpec(
        "redo",
        ReDoConfig,
        ReDo,
        enabled=lambda r: r.enabled,
        build=lambda r: ReDo(r.tau, r.every),
        charts={"ReDo: units reset per network": "redo/.*/reset"},
    ),
)
TOOLS.register(
    "nap",
    "Normalize-and-Project (Lyle et al., 2024): weights projected to their initial norm (nap.*, LayerNorm)",
    ToolSpec(
        "nap",
        NaPConfig,
        NormalizeAndProject,
        enabled=lambda n: n.enabled,
        build=lambda n: NormalizeAndProject(n.affine, n.project_output),
        charts={"NaP: weight norm / initial norm before projection": "nap/.*/growth"},
    ),
)
TOOLS.register(
    "reset",
    "layer resets (Nikishin et al., 2022): last k layers (or all) redrawn at switches or every N (reset.*)",
    ToolSpec(
        "reset",
        ResetConfig,
        LayerReset,
        enabled=lambda r: r.at != "off",
        build=lambda r: LayerReset(r.layers, r.at, r.every),
        charts={"layer resets per network": "reset/.*/count"},
    ),
)
TOOLS.register(
    "inject",
    "plasticity injection (Nikishin et al., 2023): freeze the heads, add fresh ones (inject.*)",
    ToolSpec(
        "inject",
        InjectConfig,
        PlasticityInjection,
        enabled=lambda i: i.at != "off",
        build=lambda i: PlasticityInjection(i.layers, i.at, i.every, i.step, i.limit),
        charts={"plasticity injections per network": "inject/.*/count"},
    ),
)
TOOLS.register(
    "spg",
    "SPG soft masking (Konishi et al., 2023): gradients scaled by 1 − accumulated importance (spg.*)",
    ToolSpec("spg", SPGConfig, SoftMasking, enabled=lambda s: s.enabled, build=lambda s: SoftMasking()),
)
TOOLS.register(
    "projection",
    "gradient projection, A-GEM (Chaudhry et al., 2019), on a memory of past tasks (projection.*)",
    ToolSpec(
        "projection",
        ProjectionConfig,
        GradientProjection,
        enabled=lambda p: p.enabled,
        build=lambda p: GradientProjection(p.memory_size),
    ),
)
TOOLS.register(
    "ncl",
    "natural continual learning, diagonal (Kao et al., 2021): Fisher-preconditioned gradients (ncl.*)",
    ToolSpec(
        "ncl",
        NCLConfig,
        NaturalContinualLearning,
        enabled=lambda n: n.enabled,
        build=lambda n: NaturalContinualLearning(n.prior, n.fisher_samples, n.max_norm),
    ),
)
TOOLS.register(
    "parseval",
    "Parseval regularization (Chung et al., 2024): λ·Σ‖W Wᵀ − s·I‖² on hidden layers (parseval.coef)",
    ToolSpec(
        "parseval",
        ParsevalConfig,
        ParsevalRegularization,
        enabled=lambda p: bool(p.coef),
        build=lambda p: ParsevalRegularization(p.coef, p.scale),
        charts={"Parseval: penalty per network": "parseval/.*/penalty"},
    ),
)
TOOLS.register(
    "weight-clipping",
    "weight clipping (Elsayed et al., 2024): weights clipped to ±κ·s_l after each step (weight_clipping.*)",
    ToolSpec(
        "weight_clipping",
        WeightClippingConfig,
        WeightClipping,
        enabled=lambda w: bool(w.kappa),
        build=lambda w: WeightClipping(w.kappa, w.bound, w.heads),
        charts={"weight clipping: fraction clipped per network": "weight_clipping/.*/clipped_fraction"},
    ),
)
TOOLS.register(
    "cchain",
    "C-CHAIN (Tang et al., 2025): reduce the policy's churn on a reference batch (cchain.*)",
    ToolSpec(
        "cchain",
        CChainConfig,
        ChurnReduction,
        enabled=lambda c: c.enabled,
        build=lambda c: ChurnReduction(c.coef, c.target_scale, c.warmup, c.window, c.value, c.batch_size),
        charts={"C-CHAIN: churn on the reference batch": "cchain/.*_churn", "C-CHAIN: λ": "cchain/.*_coef"},
    ),
)
TOOLS.register(
    "trac-scale",
    "TRAC's scale S every N updates (optimizer.log_every, with --optimizer trac)",
    ToolSpec(
        "optimizer",
        OptimizerConfig,
        TracScaleLogger,
        enabled=lambda o: o.name == "trac" and o.log_every > 0,
        build=lambda o: TracScaleLogger(o.log_every),
        charts={"TRAC: scale S": "trac/scale"},
        changes_training=False,
    ),
)
