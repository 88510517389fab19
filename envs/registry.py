"""The nested-ac environment namespace: Gymnasium registration plus what changes and how often."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym

from nested_ac.errors import ConfigError, unknown_choice

NAMESPACE = "nested_ac"


@dataclass(frozen=True)
class NonStationaryEnvInfo:
    """What the ``nested-ac list envs`` table shows for one registered non-stationary environment."""

    id: str
    changes: str
    default_every: int
    default_kind: str = "every"
    default_tasks: tuple[int, ...] | None = None
    return_floor: float | None = None

    def describe_schedule(self) -> str:
        if self.default_kind == "cyclic":
            return f"cycle through tasks {list(self.default_tasks or ())}, {self.default_every:,} steps each"
        return f"new task every {self.default_every:,} steps"


NONSTATIONARY_ENVS: dict[str, NonStationaryEnvInfo] = {}


def register_nonstationary(
    name: str,
    entry_point: str | Callable[..., gym.Env],
    changes: str,
    default_every: int,
    vector_entry_point: str | Callable[..., gym.vector.VectorEnv] | None = None,
    default_kind: str = "every",
    default_tasks: tuple[int, ...] | None = None,
    return_floor: float | None = None,
    **kwargs,
) -> str:
    """Register ``nested_ac/<name>`` with Gymnasium; its entry points must accept ``task_seed``.

    ``vector_entry_point`` (optional) builds ``num_envs`` copies as one numpy-vectorized env with same-step
    autoreset: the trainer's fast path (``nested_ac.envs.vector``). ``return_floor``: the lowest episode
    return the env can give, for envs whose returns can be negative; the plasticity ratio P_k then
    measures the return above it, (R_k − floor) / (R_ref − floor).
    """
    env_id = f"{NAMESPACE}/{name}"
    gym.register(id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point, kwargs=kwargs)
    NONSTATIONARY_ENVS[env_id] = NonStationaryEnvInfo(
        env_id, changes, default_every, default_kind, default_tasks, return_floor
    )
    return env_id


def import_plugin(module: str) -> None:
    """Import a plug-in module the way ``python -m`` does: with the current directory first on
    ``sys.path`` (a console script does not put it there), so ``mypkg.envs`` next to the user is found."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    importlib.import_module(module)


def resolve_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """The spec of ``env_id`` (``module:EnvId`` imports ``module`` first, see :func:`import_plugin`); a
    ConfigError if unknown."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            import_plugin(module)
        except ImportError as error:
            raise ConfigError(f"cannot import module {module!r} for env {env_id!r}: {error}") from None
    spec = gym.envs.registry.get(name)
    if spec is None:
        raise unknown_choice("env", name, gym.envs.registry, limit=12)
    return spec


def registration(env_id: str) -> NonStationaryEnvInfo | None:
    """What :func:`register_nonstationary` recorded for ``env_id`` (its default schedule, its return floor),
    or None for any other env; ``module:EnvId`` is looked up as ``EnvId`` once ``module`` is imported."""
    return NONSTATIONARY_ENVS.get(resolve_env_id(env_id).id)


def takes_task_seed(env_id: str) -> bool:
    """Whether ``env_id``'s entry point takes the run seed as ``task_seed``: every env registered with
    :func:`register_nonstationary`, and any other whose entry point (a function or a class) has a
    parameter of that name."""
    spec = resolve_env_id(env_id)
    if spec.id in NONSTATIONARY_ENVS:
        return True
    entry_point = spec.entry_point
    if isinstance(entry_point, str):
        entry_point = gym.envs.registration.load_env_creator(entry_point)
    try:
        return "task_seed" in inspect.signature(entry_point).parameters
    except (TypeError, ValueError):  # no signature to read (e.g. a builtin)
        return False
