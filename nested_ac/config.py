"""The typed run configuration: every hyperparameter of a run, loadable from YAML, overridable from the CLI.

Precedence, lowest first: the defaults below, a ``--preset NAME``, a ``--config FILE.yaml``, the explicit
command-line flags (``--env``, ``--steps`` ...), then ``--set section.key=value``. The fully resolved
configuration is written to ``config.yaml`` in the run directory; ``nested-ac train --config
that/config.yaml`` reruns it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nested_ac.errors import ConfigError, closest_first
from nested_ac.registry import TOOLS
from nested_ac.rundir import check_directory_name

MAX_SEED = 2**32 - 1  # numpy's global seed (SB3 seeds it with the run seed) takes 0 … 2**32 − 1


@dataclass
class ScheduleConfig:
    """When the environment's task changes (``env.schedule``); None takes the env's own default."""

    kind: str | None = None
    """``every`` (a new task every ``every`` steps), ``cyclic`` (through ``tasks``), ``random`` (one of
    ``tasks`` per interval) or ``explicit`` (``switches``); null: the env's default (``every``)."""
    every: int | None = None
    """Steps per task (global steps, summed over the copies); 0: never switch; null: the env's default
    (stationary for an env nested-ac does not know)."""
    tasks: list[int] | None = None
    """The tasks a ``cyclic`` or ``random`` schedule uses, e.g. ``[0, 1]``; null: the env's default."""
    switches: list[list[int]] = field(default_factory=list)
    """``explicit``: ``[[step, task], …]``, steps strictly increasing and below ``steps``; task 0 before."""
    at_episode_boundary: bool = False
    """Each copy switches at the end of its current episode instead of at the scheduled step."""
    since_last_switch: bool = False
    """With ``at_episode_boundary`` and a periodic kind (``every``, ``cyclic``, ``random``): the next task
    starts at the first episode end more than ``every`` steps after the previous switch (steps numbered from
    0, the start counting as a switch at step 0), Dohare et al.'s SlipperyAnt rule; instead of at the next
    episode end after each multiple of ``every``. Phase k runs the task the schedule gives step k·every."""


@dataclass
class EnvConfig:
    """The (non-stationary) environment (``env``) and its parallel copies."""

    id: str = "nested_ac/PermutedCartPole-v0"
    """A Gymnasium id; ``module:EnvId`` imports ``module`` first (a plug-in env)."""
    n_envs: int = 8
    """Parallel copies of the environment."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the env's entry point (``gym.make``)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    vectorized: bool = True
    """Run the copies through the env's numpy-vectorized implementation where it has one (the fast path)."""
    return_floor: float | None = None
    """R_min, the lowest return an episode can have: P_k then measures the return above it; null: the env's
    own (a ``return_floor`` attribute of the env, else its registration's), or none."""


@dataclass
class PPOConfig:
    """Stable-Baselines3 PPO hyperparameters (``ppo``), with the names and meaning of
    ``stable_baselines3.PPO``'s arguments, and the engine (``nested_ac.agents.ContinualPPO``)."""

    learning_rate: float = 3e-4
    """The optimizer's learning rate (> 0)."""
    n_steps: int = 256
    """Steps per copy in each rollout: a rollout is ``n_steps`` × ``env.n_envs`` env steps."""
    batch_size: int = 256
    """Minibatch size of the update."""
    n_epochs: int = 10
    """Passes over each rollout in the update."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """λ of generalized advantage estimation."""
    clip_range: float = 0.2
    """PPO's clipping range of the probability ratio."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus in the loss."""
    vf_coef: float = 0.5
    """Weight of the value loss in the loss."""
    max_grad_norm: float | None = 0.5
    """The gradient's norm is clipped to this; null: no clipping (Dohare et al.'s PPO)."""
    normalize_advantage: bool = True
    """Normalize the advantages (where: ``normalize_advantage_over``)."""
    normalize_advantage_over: str = "minibatch"
    """Where advantages are normalised to mean 0 and standard deviation 1, with ``normalize_advantage``:
    ``minibatch`` (SB3's, in each minibatch: (A − mean)/(std + 1e-8)) or ``batch`` (once over the whole
    rollout before the epochs, as Dohare et al.'s PPO: (A − mean)/std)."""
    engine: str = "fast"
    """``fast`` (the same update with less overhead, equal to float rounding) or ``sb3`` (Stable-Baselines3's
    numbers exactly)."""


@dataclass
class NetworkConfig:
    """Separate actor and critic MLPs with one activation function (``network``)."""

    actor: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden widths of the actor (the policy network), one per layer."""
    critic: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden widths of the critic (the value network), one per layer."""
    activation: str = "relu"
    """``relu``, ``tanh``, ``leaky_relu``, ``elu``, ``gelu``, ``crelu`` ([relu(z), relu(−z)]: a layer of n
    units feeds 2n features to the next) or ``fourier`` (deep Fourier features [sin(z), cos(z)], also 2n);
    docs/architectures.md."""
    layer_norm: bool = False
    """A LayerNorm (learnable gain γ = 1 and bias β = 0 at the start) between every hidden Linear and its
    activation, in the actor and every critic: h = φ(LN(Wx + b))."""
    init: str = "orthogonal"
    """The initial weights: ``orthogonal`` (SB3's: gain √2 for hidden layers, 0.01 for the action head, 1 for
    the value head, biases 0) or ``lecun_uniform`` (every layer, heads included, W ~ U(±√(3/fan_in)),
    biases 0: Dohare et al.'s PPO). Continual backprop and ReDo redraw replaced units the same way."""


@dataclass
class OptimizerConfig:
    """The optimizer of every network and its hyperparameters (``optimizer``; the learning rate is
    ``ppo.learning_rate``)."""

    name: str = "adam"
    """The optimizer (``nested-ac list optimizers``)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam's β1, β2 (Adam, UPGD and TRAC's Adam); Kron: β1 of its momentum, β2 of its preconditioner."""
    eps: float = 1e-5
    """Adam's ε (Adam, UPGD and TRAC's Adam)."""
    weight_decay: float = 0.0
    """Decoupled weight decay λ (Adam, UPGD, TRAC's Adam and Kron): w ← (1 − lr·λ)·w besides the step
    (AdamW's)."""
    l2: float = 0.0
    """Adam and TRAC's Adam only: coupled L2 λ, added to the gradient before Adam's moments (g ← g + λ·w:
    torch Adam's ``weight_decay``), on every parameter, biases and a Gaussian policy's log-std included.
    Dohare et al.'s "L2" (1e-3) and continual backprop's (1e-4). Not together with ``weight_decay``."""
    beta_utility: float = 0.999
    """UPGD: decay of the utility trace."""
    sigma: float = 1e-3
    """UPGD: standard deviation of the perturbation noise."""
    protect: bool = True
    """UPGD: gate the gradient too (the paper's UPGD), not only the noise."""
    log_every: int = 10
    """UPGD: log the scaled utilities, TRAC: its scale S, every N updates (0: never)."""


@dataclass
class NestedConfig:
    """The nested-critic agent (``--agent nested-ppo``): K critics, each a learned loss for the inner one
    (``nested``; see ``agents/nested.py``)."""

    levels: int = 2
    """K ≥ 1 critics (1: PPO)."""
    kappa: float = 1.0
    """κ ≥ 0, the weight of each critic's pull towards its outer neighbour."""
    lr_ratio: float = 0.1
    """ρ_lr in (0, 1]: critic k learns at ``ppo.learning_rate``·ρ_lr^(k-1)."""
    mode: str = "distill"
    """``distill`` (the outer critics learn from the inner ones' losses) or ``polyak`` (averaging)."""
    tau: float = 0.02
    """τ in (0, 1], the Polyak rate (``mode`` = ``polyak``)."""
    freeze_outer_after: int | None = None
    """Env steps (0 … ``steps``) after which the outer critics stop changing; null: never."""
    critic: list[int] | None = None
    """Hidden widths of the outer critics; null: ``network.critic``."""


@dataclass
class CBPConfig:
    """Continual backprop (``cbp``; Dohare et al., Nature 2024)."""

    enabled: bool = False
    """Replace low-utility hidden units (``--cbp`` sets it)."""
    replacement_rate: float = 1e-4
    """ρ in [0, 1]: the fraction of each layer's mature units replaced per optimizer step."""
    maturity: int = 10_000
    """m ≥ 0: optimizer steps before a unit can be replaced."""
    decay_rate: float = 0.99
    """η in [0, 1): decay of the running utility."""
    mean_corrected: bool = False
    """Use |h − f̂| (the activation less its running mean) in the utility."""
    rounding: str = "carry"
    """How the expected number of replacements n = ρ·(mature units) becomes a whole number each step:
    ``carry`` (⌊n + carried⌋, the fraction carried to the next step) or ``stochastic`` (⌊n⌋, plus one
    with probability n − ⌊n⌋: Dohare et al.'s RL code, identical to it while n < 1)."""
    reset_optimizer_state: bool = True
    """Zero the optimizer state (Adam's moments and, with one step count per weight, its step count) of
    every replaced entry: the authors' supervised code (AdamGnT). ``false``: leave it, as their RL code
    does (plain torch Adam)."""
    move_mean_to_bias: bool = True
    """Add a replaced unit's mean contribution W_out[:, i]·f̂_i to the next layer's bias (what the authors'
    code sets out to do). ``false``: add nothing, which is what their code computes (it zeroes f_i before
    adding W_out[:, i]·f_i)."""


@dataclass
class ShrinkPerturbConfig:
    """Shrink & Perturb (``shrink_perturb``; Ash & Adams, 2020)."""

    mode: str = "off"
    """``off``, ``step`` (θ ← shrink·θ + sigma·ε after each optimizer step) or ``switch``
    (θ ← alpha·θ + (1 − alpha)·θ_fresh at each task switch)."""
    shrink: float = 0.999
    """``step``: the factor θ is shrunk by."""
    sigma: float = 1e-4
    """``step``: standard deviation of the noise ε."""
    alpha: float = 0.5
    """``switch``: the weight of the current parameters against fresh ones."""


@dataclass
class L2InitConfig:
    """L2-Init (``l2_init``; Kumar et al., 2023)."""

    coef: float = 0.0
    """λ, the strength of the pull toward the initial weights (0: off)."""


@dataclass
class ReDoConfig:
    """ReDo (``redo``; Sokar et al., 2023): recycle dormant units."""

    enabled: bool = False
    """Reset the τ-dormant units."""
    tau: float = 0.025
    """τ: a unit is dormant when its mean |activation| over the layer's mean is at most τ."""
    every: int = 10
    """Reset every N updates."""


@dataclass
class NaPConfig:
    """Normalize-and-Project (``nap``; Lyle et al., NeurIPS 2024): LayerNorm plus, after every optimizer
    step, each hidden layer's weights projected back to their initial norm. Needs ``network.layer_norm``."""

    enabled: bool = False
    """Project after every step; a ConfigError unless ``network.layer_norm`` is true."""
    affine: str = "joint"
    """The LayerNorms' gain and bias: ``joint`` ((γ_l, β_l) projected together to their initial norm) or
    ``none`` (left free)."""
    project_output: bool = False
    """Project the output heads' weights too (not followed by a normalisation: this fixes the scale of the
    logits and values)."""


@dataclass
class ResetConfig:
    """Layer resets (``reset``; Nikishin et al., 2022; Juliani & Ash, 2024's reset-final and reset-all)."""

    at: str = "off"
    """``off``, ``switch`` (at every task switch) or ``every`` (every N updates, ``reset.every``)."""
    layers: int | str = 1
    """The last k layers of each network (1: its head alone, reset-final) or ``all`` (reset-all)."""
    every: int = 100
    """``every``: reset every N updates."""


@dataclass
class InjectConfig:
    """Plasticity injection (``inject``; Nikishin et al., NeurIPS 2023)."""

    at: str = "off"
    """``off``, ``switch`` (at every task switch), ``every`` (every N updates, ``inject.every``) or
    ``once`` (at the end of the first rollout at or after env step ``inject.step``)."""
    layers: int = 1
    """The head: the last k layers of the actor and of the critic (1: the output layer, whose repeated
    injections fold into three linear heads)."""
    every: int = 100
    """``every``: inject every N updates."""
    step: int = 0
    """``once``: the env step at or after which it injects."""
    limit: int | None = None
    """The most injections (null: no limit; needed where a head deeper than one layer is injected more
    than once: each injection adds two frozen heads)."""


@dataclass
class SPGConfig:
    """SPG soft masking (``spg``; Konishi et al., ICML 2023)."""

    enabled: bool = False
    """At each task switch, accumulate each weight's importance to the ending task into a mask γ_acc;
    later gradients are scaled by 1 − γ_acc."""


@dataclass
class ProjectionConfig:
    """Gradient projection (``projection``; A-GEM, Chaudhry et al., ICLR 2019)."""

    enabled: bool = False
    """Project a gradient that would raise the loss on past tasks onto the plane orthogonal to theirs."""
    memory_size: int = 256
    """M > 0 observations kept of each past task."""


@dataclass
class NCLConfig:
    """Natural continual learning, diagonal (``ncl``; Kao et al., NeurIPS 2021): the optimizer gets the
    Laplace-regularised gradient g + Λ(θ − µ), and its update is preconditioned by λΛ⁻¹; Λ = ``prior`` +
    the Fisher of past tasks, µ the parameters at the last switch."""

    enabled: bool = False
    """Regularise toward the last switch's parameters and precondition the update with the Fisher of past
    tasks."""
    prior: float = 1e-2
    """λ > 0, the precision before any task; between the median and the top decile of the Fisher's entries
    measured on permuted CartPole, so the Fisher decides the precision of the important weights."""
    fisher_samples: int = 256
    """States > 0 of the ending rollout the Fisher is averaged over."""
    max_norm: float = 0.5
    """> 0, the cap on ‖g + Λ(θ − µ)‖ (PPO's ``max_grad_norm``)."""


@dataclass
class ParsevalConfig:
    """Parseval regularization (``parseval``; Chung, Cherif, Meger & Precup, NeurIPS 2024): the loss gains
    λ·Σ_l ‖W_l W_lᵀ − s·I‖²_F over every hidden layer of the actor and the critics."""

    coef: float = 0.0
    """λ ≥ 0 (0: off); the authors use 1e-3 (gridworld, MetaWorld) and 1e-4 (LunarLander, quadruped) for
    64-unit layers."""
    scale: float | None = None
    """s > 0, the squared row norm the penalty pulls every row toward; null: the initialisation's own,
    g² = 2 for SB3's orthogonal hidden layers (the authors' s), 1 for LeCun-uniform, 1/3 for PyTorch's
    default init (fan_in times the entries' variance)."""


@dataclass
class WeightClippingConfig:
    """Weight clipping (``weight_clipping``; Elsayed, Lan, Lyle & Mahmood, RLC 2024): after every optimizer
    step each weight and bias of layer l is clipped to [−κ·s_l, κ·s_l]."""

    kappa: float = 0.0
    """κ ≥ 0 (0: off); the authors' PPO uses 3."""
    bound: str = "init"
    """s_l: ``init`` (the bound of the uniform distribution with the variance of the layer's own
    initialisation: √(3/fan_in) for LeCun-uniform, g·√(3/max(fan_in, fan_out)) for orthogonal with gain g,
    1/√fan_in for PyTorch's default) or ``fan_in`` (1/√fan_in whatever the initialisation: what the authors'
    PPO code computes for its orthogonally initialised networks)."""
    heads: bool = True
    """Clip the output heads too (the authors' default); false: the hidden layers only."""


@dataclass
class CChainConfig:
    """C-CHAIN, continual churn approximated reduction (``cchain``; Tang, Obando-Ceron, Castro, Courville &
    Berseth, ICML 2025): the loss gains λ·E_ref[D(f_θ(s), f_θ⁻(s))] on a reference batch other than the
    update's minibatch, θ⁻ the parameters before the last optimizer step."""

    enabled: bool = False
    """Add the churn-reduction term of the policy's outputs to every minibatch's loss."""
    coef: float = 100.0
    """λ > 0 at the start of each task, and throughout with ``target_scale`` 0 (the authors' PPO: 100)."""
    target_scale: float = 0.05
    """β ≥ 0: once ``warmup`` updates of a task have passed, λ = β·mean|L_pg| / mean D over the last
    ``window`` updates (the authors' PPO: 0.05); 0: λ stays ``coef``."""
    warmup: int = 10
    """Updates ≥ 0 into each task before λ adapts."""
    window: int = 50
    """Updates > 0 the running means of |L_pg| and D are taken over."""
    value: bool = False
    """Reduce the critic's churn too, E_ref[(V_θ(s) − V_θ⁻(s))²] with its own λ_V (``coef`` at each task's
    start, then β·mean L_V / mean D_V): an extension; the authors' PPO reduces the policy's churn only."""
    batch_size: int | None = None
    """Observations > 0 in the reference batch, drawn anew every step from the current rollout; null:
    ``ppo.batch_size`` (the authors' size, one minibatch)."""


@dataclass
class DiagnosticsConfig:
    """Plasticity diagnostics (``diagnostics``): dormant units, feature rank, weights, entropy."""

    every: int = 10
    """Every N rollouts (0: off)."""
    probe_size: int = 512
    """Observations of the last rollout the diagnostics are measured on."""
    tau: float = 0.025
    """τ of the dormant fraction (ReDo's definition)."""
    delta: float = 0.01
    """δ of srank_δ, the feature rank."""


@dataclass
class MetricsConfig:
    """Metrics beside the per-task ones (``metrics``)."""

    window: int = 0
    """W > 0: also cut the run into windows of W env steps (global, summed over the copies) and give R_w,
    P_w against the first window, its late mean and the slide over windows, for a world that drifts
    without tasks; 0: off."""


@dataclass
class CheckpointConfig:
    """Periodic checkpoints in ``<run>/checkpoints/`` (``checkpoint``)."""

    every: int = 50_000
    """Every N env steps (0: only on an interrupt)."""
    keep: int = 3
    """How many of the latest checkpoints are kept."""


@dataclass
class RunConfig:
    """Everything a run needs. A registered tool's config section that is not one of the fields below is
    a top-level section too (``sections``, read through :meth:`section`)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: str = "ppo"
    """The agent (``nested-ac list agents``)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    nested: NestedConfig = field(default_factory=NestedConfig)
    cbp: CBPConfig = field(default_factory=CBPConfig)
    shrink_perturb: ShrinkPerturbConfig = field(default_factory=ShrinkPerturbConfig)
    l2_init: L2InitConfig = field(default_factory=L2InitConfig)
    redo: ReDoConfig = field(default_factory=ReDoConfig)
    nap: NaPConfig = field(default_factory=NaPConfig)
    reset: ResetConfig = field(default_factory=ResetConfig)
    inject: InjectConfig = field(default_factory=InjectConfig)
    spg: SPGConfig = field(default_factory=SPGConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    ncl: NCLConfig = field(default_factory=NCLConfig)
    parseval: ParsevalConfig = field(default_factory=ParsevalConfig)
    weight_clipping: WeightClippingConfig = field(default_factory=WeightClippingConfig)
    cchain: CChainConfig = field(default_factory=CChainConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    steps: int = 100_000
    """Env steps in total, summed over the copies; PPO trains whole rollouts, so the last may run past."""
    seed: int = 0
    """Seeds the networks, the environments and the tasks (0 … 2³² − 1)."""
    run_dir: str = "runs"
    """The parent directory of the run."""
    name: str | None = None
    """The run's directory name (one name, no ``/``); null: ``<agent>-<optimizer>-<env>-s<seed>``."""
    device: str = "cpu"
    """The torch device of the networks (``cpu``, ``cuda``, ``cuda:1`` …); one this machine lacks is an error
    before anything is written."""
    torch_threads: int = 1
    """torch's threads in the training process."""
    progress_bar: bool = True
    """Show a progress bar while training."""
    report: bool = True
    """When the run finishes, write its own report (``<run>/report/``, its figures also in TensorBoard's
    Images tab); a sweep's runs leave it to the sweep's report."""
    plugins: list[str] = field(default_factory=list)
    """Modules imported before the configuration is read (the current directory first), so the tools,
    agents, optimizers or envs they register are there."""
    sections: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        for name, section in plugin_sections().items():
            self.sections.setdefault(name, section())

    def section(self, name: str) -> Any:
        """The config section ``name``: one of the fields above or a registered plug-in tool's."""
        if name in _keys(RunConfig):
            return getattr(self, name)
        return self.sections[name] if name in self.sections else plugin_sections()[name]()

    def default_name(self) -> str:
        env_name = self.env.id.split(":")[-1].split("/")[-1]
        return f"{self.agent}-{self.optimizer.name}-{env_name}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """Every key, plug-in sections at the top level beside the built-in ones."""
        values = dataclasses.asdict(self)
        values.update(values.pop("sections"))
        return values

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def check(self) -> None:
        """Range checks that the types alone do not express; a ConfigError names the key."""
        positive = {
            "steps": self.steps,
            "env.n_envs": self.env.n_envs,
            "ppo.n_steps": self.ppo.n_steps,
            "ppo.batch_size": self.ppo.batch_size,
            "ppo.n_epochs": self.ppo.n_epochs,
            "torch_threads": self.torch_threads,
            "checkpoint.keep": self.checkpoint.keep,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {value}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in 0 … {MAX_SEED}, got {self.seed}")
        if self.name is not None:
            check_directory_name("name", self.name)
        if self.ppo.learning_rate <= 0:
            raise ConfigError(f"ppo.learning_rate must be > 0, got {self.ppo.learning_rate}")
        if self.env.schedule.every is not None and self.env.schedule.every < 0:
            raise ConfigError(
                f"env.schedule.every must be >= 0 (0 = never switch), got {self.env.schedule.every}"
            )
        schedule = self.env.schedule
        if schedule.since_last_switch and (not schedule.at_episode_boundary or schedule.kind == "explicit"):
            raise ConfigError(
                "env.schedule.since_last_switch counts from the episode end where the last switch happened: "
                "it needs env.schedule.at_episode_boundary=true and a periodic kind (every, cyclic or random)"
            )
        if self.ppo.max_grad_norm is not None and self.ppo.max_grad_norm <= 0:
            raise ConfigError(
                f"ppo.max_grad_norm must be > 0 (null: no clipping), got {self.ppo.max_grad_norm}"
            )
        if self.optimizer.l2 < 0:
            raise ConfigError(f"optimizer.l2 must be >= 0, got {self.optimizer.l2}")
        if self.checkpoint.every < 0:
            raise ConfigError(
                f"checkpoint.every must be >= 0 (0 = only on an interrupt), got {self.checkpoint.every}"
            )
        if self.diagnostics.every < 0 or self.diagnostics.probe_size <= 0:
            raise ConfigError("diagnostics.every must be >= 0 (0 = off) and diagnostics.probe_size > 0")
        if self.optimizer.log_every < 0:
            raise ConfigError(f"optimizer.log_every must be >= 0 (0 = never), got {self.optimizer.log_every}")
        if not 0 <= self.metrics.window <= self.steps:
            raise ConfigError(
                f"metrics.window must be 0 (off) or a number of steps in 1 … steps ({self.steps}), got "
                f"{self.metrics.window}"
            )
        if any(width <= 0 for width in self.network.actor + self.network.critic):
            raise ConfigError("network.actor and network.critic widths must be positive integers")
        if self.nap.enabled and not self.network.layer_norm:
            raise ConfigError(
                "nap.enabled needs network.layer_norm: true (Normalize-and-Project is LayerNorm plus the "
                "projection; it does not switch LayerNorm on by itself)"
            )


def plugin_sections() -> dict[str, type]:
    """The config sections (key → dataclass) of registered tools that :class:`RunConfig` lacks itself."""
    own = _keys(RunConfig)
    return {spec.section: spec.config for spec in (e.target for e in TOOLS) if spec.section not in own}


def _keys(cls: type) -> list[str]:
    """The keys of config dataclass ``cls`` (not its internal fields)."""
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _as_number(value: Any) -> int | float | None:
    """A number from an int, a float or a numeric string (YAML reads ``1e-3`` as a string); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to the type ``hint`` of config key ``key``, or a ConfigError saying why not."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} is a section; expected a mapping, got {value!r}")
        return _build(hint, value, prefix=f"{key}.")
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} expects a list of {_type_name(item_hint)}, got {value!r}")
        return [_coerce(item, item_hint, key) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        number = _as_number(value)
        if number is not None and float(number).is_integer():
            return int(number)
    elif hint is float:
        number = _as_number(value)
        if number is not None:
            return float(number)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"config key {key!r} expects {_type_name(hint)}, got {value!r} ({type(value).__name__})"
    )


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from a (partial) mapping; missing keys keep their defaults."""
    hints: dict[str, Any] = typing.get_type_hints(cls)
    names = _keys(cls)
    extra = plugin_sections() if cls is RunConfig else {}
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for name, value in values.items():
        if name in extra:
            sections[name] = _coerce(value, extra[name], prefix + name)
        elif name in names:
            kwargs[name] = _coerce(value, hints[name], prefix + name)
        else:
            raise _unknown_key(prefix + str(name), prefix, [*names, *extra])
    return cls(**kwargs, sections=sections) if sections else cls(**kwargs)


def _unknown_key(key: str, prefix: str, names: list[str]) -> ConfigError:
    full = [prefix + name for name in names]
    suggestion = closest_first(key, full)
    section = f"in section {prefix[:-1]!r}" if prefix else "at the top level"
    return ConfigError(f"unknown config key {key!r}; valid keys {section}: {', '.join(suggestion)}")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nested(dotted_key: str, value: Any) -> dict[str, Any]:
    parts = dotted_key.split(".")
    if not all(parts):
        raise ConfigError(f"malformed config key {dotted_key!r}")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _check_keys(cls: type, dotted_key: str) -> None:
    """Raise a ConfigError naming ``dotted_key`` if it does not exist in dataclass ``cls``."""
    prefix = ""
    for part in dotted_key.split("."):
        hints = typing.get_type_hints(cls)
        keys = {name: hints[name] for name in _keys(cls)} | (plugin_sections() if cls is RunConfig else {})
        if part not in keys:
            raise _unknown_key(prefix + part, prefix, list(keys))
        hint = keys[part]
        prefix += part + "."
        if not dataclasses.is_dataclass(hint):
            if prefix[:-1] != dotted_key and typing.get_origin(hint) is not dict:
                raise ConfigError(f"config key {prefix[:-1]!r} is not a section; cannot set {dotted_key!r}")
            return
        cls = hint


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a ConfigError for a missing, malformed or non-mapping file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"malformed YAML in {str(path)!r}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def parse_set(assignment: str) -> tuple[str, Any]:
    """``'ppo.n_epochs=4'`` → ``('ppo.n_epochs', 4)``; the value is read as YAML (``[64, 64]``, ``true``)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def resolve_config(
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
    preset: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults ← ``preset`` ← YAML ``file`` ← ``overrides`` (dotted keys) ← ``assignments`` (key=value)."""
    values: dict[str, Any] = _merge(preset or {}, load_yaml(file) if file is not None else {})
    dotted = dict(overrides or {})
    for assignment in assignments or []:
        key, value = parse_set(assignment)
        dotted[key] = value
    import_plugins(_coerce(dotted.get("plugins", values.get("plugins", [])), list[str], "plugins"))
    for key, value in dotted.items():
        _check_keys(RunConfig, key)
        values = _merge(values, _nested(key, value))
    config = _build(RunConfig, values)
    config.check()
    return config


def import_plugins(modules: list[str]) -> None:
    """Import each plug-in module (the current directory first on ``sys.path``); a ConfigError if one
    cannot be imported."""
    from nested_ac.envs.registry import import_plugin

    for module in modules:
        try:
            import_plugin(module)
        except ImportError as error:
            raise ConfigError(
                f"cannot import plug-in module {module!r} (config key plugins): {error}"
            ) from None
