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


@dataclass
class ScheduleConfig:
    """When the environment's task changes; None takes the environment's own default.

    ``kind``: ``every`` (a new task every ``every`` steps), ``cyclic`` (through ``tasks``, ``every`` steps
    each), ``random`` (a task drawn from ``tasks`` every ``every`` steps) or ``explicit`` (``switches``, a
    list of ``[step, task]``). ``at_episode_boundary``: each copy switches at its next episode end instead
    of at the scheduled step.
    """

    kind: str | None = None
    every: int | None = None
    tasks: list[int] | None = None
    switches: list[list[int]] = field(default_factory=list)
    at_episode_boundary: bool = False
    since_last_switch: bool = False
    """With ``at_episode_boundary`` and a periodic kind (``every``, ``cyclic``, ``random``): the next task
    starts at the first episode end more than ``every`` steps after the previous switch (steps numbered from
    0, the start counting as a switch at step 0), Dohare et al.'s SlipperyAnt rule; instead of at the next
    episode end after each multiple of ``every``. Phase k runs the task the schedule gives step k·every."""


@dataclass
class EnvConfig:
    """The (non-stationary) environment: a Gymnasium id (``module:EnvId`` works too) and its copies.

    ``vectorized``: use the env's numpy-vectorized implementation where it has one (the fast path).
    """

    id: str = "nested_ac/PermutedCartPole-v0"
    n_envs: int = 8
    kwargs: dict[str, Any] = field(default_factory=dict)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    vectorized: bool = True


@dataclass
class PPOConfig:
    """Stable-Baselines3 PPO hyperparameters (same names and meaning as ``stable_baselines3.PPO``), and
    ``engine``: ``fast`` (the default: the same update with less overhead, equal to float rounding) or
    ``sb3`` (Stable-Baselines3's numbers exactly); see ``nested_ac.agents.ContinualPPO``."""

    learning_rate: float = 3e-4
    n_steps: int = 256
    batch_size: int = 256
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float | None = 0.5
    """The gradient norm is clipped to this (SB3's default 0.5); ``null``: no clipping."""
    normalize_advantage: bool = True
    normalize_advantage_over: str = "minibatch"
    """Where advantages are normalised to mean 0 and standard deviation 1, with ``normalize_advantage``:
    ``minibatch`` (SB3's, in each minibatch: (A − mean)/(std + 1e-8)) or ``batch`` (once over the whole
    rollout before the epochs, as Dohare et al.'s PPO: (A − mean)/std)."""
    engine: str = "fast"


@dataclass
class NetworkConfig:
    """Separate actor and critic MLPs (hidden widths per layer) with one activation function."""

    actor: list[int] = field(default_factory=lambda: [64, 64])
    critic: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "relu"
    init: str = "orthogonal"
    """The initial weights: ``orthogonal`` (SB3's: gain √2 for hidden layers, 0.01 for the action head, 1 for
    the value head, biases 0) or ``lecun_uniform`` (every layer, heads included, W ~ U(±√(3/fan_in)),
    biases 0: Dohare et al.'s PPO). Continual backprop and ReDo redraw replaced units the same way."""


@dataclass
class OptimizerConfig:
    """The optimizer of every network and its hyperparameters (the learning rate is ``ppo.learning_rate``).

    ``betas``, ``eps`` and ``weight_decay`` (decoupled) serve Adam and UPGD; the ``UPGD`` fields only UPGD.
    """

    name: str = "adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-5
    weight_decay: float = 0.0
    """Decoupled weight decay λ: w ← (1 − lr·λ)·w besides the step (AdamW's; UPGD's)."""
    l2: float = 0.0
    """Adam only: coupled L2 λ, added to the gradient before Adam's moments (g ← g + λ·w: torch Adam's
    ``weight_decay``), on every parameter, biases and a Gaussian policy's log-std included. Dohare et al.'s
    "L2" (1e-3) and continual backprop's (1e-4). Not together with ``weight_decay``."""
    beta_utility: float = 0.999  # UPGD: decay of the utility trace
    sigma: float = 1e-3  # UPGD: standard deviation of the perturbation noise
    protect: bool = True  # UPGD: gate the gradient too (the paper's UPGD), not only the noise
    log_every: int = 10  # UPGD: log the scaled utilities every N updates (0: never)


@dataclass
class NestedConfig:
    """The nested-critic agent (``--agent nested-ppo``): K critics, each a learned loss for the inner one.

    ``levels`` = K; ``kappa`` = κ (weight of the pull towards the neighbouring critics); ``lr_ratio`` = ρ_lr
    (critic k learns at ``lr·ρ_lr^(k-1)``); ``mode`` = ``distill`` or ``polyak`` (with rate ``tau``);
    ``freeze_outer_after`` = N environment steps after which the outer critics stop changing (None: never);
    ``critic`` = hidden widths of the outer critics (None: ``network.critic``). See ``agents/nested.py``.
    """

    levels: int = 2
    kappa: float = 1.0
    lr_ratio: float = 0.1
    mode: str = "distill"
    tau: float = 0.02
    freeze_outer_after: int | None = None
    critic: list[int] | None = None


@dataclass
class CBPConfig:
    """Continual backprop (``--cbp``): replacement rate ρ, maturity m (optimizer steps), decay η."""

    enabled: bool = False
    replacement_rate: float = 1e-4
    maturity: int = 10_000
    decay_rate: float = 0.99
    mean_corrected: bool = False
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
    """Shrink & Perturb: ``mode`` off, ``step`` (θ ← shrink·θ + sigma·ε each optimizer step) or ``switch``
    (θ ← alpha·θ + (1 - alpha)·θ_fresh at each task switch)."""

    mode: str = "off"
    shrink: float = 0.999
    sigma: float = 1e-4
    alpha: float = 0.5


@dataclass
class L2InitConfig:
    """L2-Init: pull toward the initial weights with strength ``coef`` (0: off)."""

    coef: float = 0.0


@dataclass
class ReDoConfig:
    """ReDo: reset the τ-dormant units every ``every`` updates."""

    enabled: bool = False
    tau: float = 0.025
    every: int = 10


@dataclass
class SPGConfig:
    """SPG soft masking (Konishi et al., ICML 2023): at each task switch each weight's importance to the
    ending task is accumulated into a mask γ_acc; later gradients are scaled by 1 − γ_acc."""

    enabled: bool = False


@dataclass
class ProjectionConfig:
    """Gradient projection (A-GEM, Chaudhry et al., ICLR 2019): ``memory_size`` observations of each past
    task; a gradient that would raise their loss is projected onto the plane orthogonal to theirs."""

    enabled: bool = False
    memory_size: int = 256


@dataclass
class NCLConfig:
    """Natural continual learning, diagonal (Kao et al., NeurIPS 2021): the optimizer gets
    Λ⁻¹·g + (θ − µ), Λ = ``prior`` + the Fisher of past tasks on ``fisher_samples`` states each, µ the
    parameters at the last switch, the direction's norm capped at ``max_norm``. The default prior lies
    between the median and the top decile of the Fisher's entries measured on permuted CartPole, so the
    Fisher decides the precision of the important weights; the cap equals PPO's ``max_grad_norm``."""

    enabled: bool = False
    prior: float = 1e-2
    fisher_samples: int = 256
    max_norm: float = 0.5


@dataclass
class DiagnosticsConfig:
    """Plasticity diagnostics every ``every`` rollouts (0: off) on ``probe_size`` recent observations."""

    every: int = 10
    probe_size: int = 512
    tau: float = 0.025
    delta: float = 0.01


@dataclass
class CheckpointConfig:
    """Periodic checkpoints in ``<run>/checkpoints/``: every ``every`` steps (0: only on an interrupt)."""

    every: int = 50_000
    keep: int = 3


@dataclass
class RunConfig:
    """Everything a run needs; ``name`` = None picks ``<agent>-<optimizer>-<env>-s<seed>``.

    ``plugins``: modules imported before the configuration is read (the current directory first), so the
    tools, agents or optimizers they register are there; a registered tool's config section that is not
    one of the fields below is a top-level section too (``sections``, read through :meth:`section`).
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: str = "ppo"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    nested: NestedConfig = field(default_factory=NestedConfig)
    cbp: CBPConfig = field(default_factory=CBPConfig)
    shrink_perturb: ShrinkPerturbConfig = field(default_factory=ShrinkPerturbConfig)
    l2_init: L2InitConfig = field(default_factory=L2InitConfig)
    redo: ReDoConfig = field(default_factory=ReDoConfig)
    spg: SPGConfig = field(default_factory=SPGConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    ncl: NCLConfig = field(default_factory=NCLConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    steps: int = 100_000
    seed: int = 0
    run_dir: str = "runs"
    name: str | None = None
    device: str = "cpu"
    torch_threads: int = 1
    progress_bar: bool = True
    plugins: list[str] = field(default_factory=list)
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
        if any(width <= 0 for width in self.network.actor + self.network.critic):
            raise ConfigError("network.actor and network.critic widths must be positive integers")


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
