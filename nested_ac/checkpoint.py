"""Checkpoints: everything a run needs to continue exactly, written atomically every N steps.

A checkpoint is taken at a rollout boundary (just before a rollout starts, after the previous update), so
the rollout buffer need not be saved. It is one explicit, versioned dict, saved with ``torch.save`` to
``<run>/checkpoints/step_<N>.pt`` through a temporary file and ``os.replace``: a crash while writing leaves
the previous checkpoint intact. Keys:

- ``format``, ``agent``, ``env_id``, ``observation_space``, ``action_space``: what the compatibility check
  compares before anything is restored;
- ``step``: SB3's ``num_timesteps``;
- ``policy``, ``optimizer``: ``state_dict()`` of the policy (every network, every critic) and of its
  optimizer (UPGD's utility traces and every optimizer's moments live there);
- ``algorithm``: SB3's counters and the next rollout's inputs (last observation, episode starts,
  episode-info buffers, progress);
- ``env``: the environments' full state (:func:`get_env_state`);
- ``rng``: python, numpy and torch generator states;
- ``parts``: ``state_dict()`` of each stateful callback (task clock, episode statistics);
- ``tools``: ``state_dict()`` of each of the agent's tools, in order (``plasticity_tools`` in checkpoints
  written before the protocol was renamed);
- ``logger``: the values recorded but not yet written to TensorBoard (SB3 writes ``train/*`` one rollout
  later), so the resumed curves match an uninterrupted run;
- ``events``: the size of each TensorBoard event file once the points up to this step were written; a
  resume cuts the files back to these sizes (:func:`nested_ac.events.rewind_events`).

Checkpoints are pickles (``torch.load(weights_only=False)``): load only your own.
"""

from __future__ import annotations

import io
import pickle
import random
import types
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import cloudpickle
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from nested_ac.envs.vector import GymnasiumVecEnv
from nested_ac.errors import ConfigError
from nested_ac.events import DeferredOutput, event_file_sizes
from nested_ac.interrupts import InterruptGuard
from nested_ac.rundir import CHECKPOINT_NAME, checkpoint_file, replace_atomically, writing

FORMAT_VERSION = 1

# Packages that were installed at the top level before they moved under nested_ac (nested_ac.envs,
# nested_ac.agents): checkpoints written then name their classes envs.* and agents.*.
MOVED_PACKAGES = ("envs", "agents")


class _Unpickler(pickle.Unpickler):
    """Unpickles a checkpoint, mapping classes of the moved packages (``envs.vector.X``) to their place
    now (``nested_ac.envs.vector.X``), so a run checkpointed by an older nested-ac still resumes."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".", 1)[0] in MOVED_PACKAGES:
            module = f"nested_ac.{module}"
        return super().find_class(module, name)


def _loads(data: bytes) -> Any:
    """``pickle.loads`` through :class:`_Unpickler`."""
    return _Unpickler(io.BytesIO(data)).load()


# What torch.load needs of a pickle module, reading with _Unpickler.
_pickle_module = types.ModuleType("nested_ac_checkpoint_pickle")
_pickle_module.Unpickler = _Unpickler  # type: ignore[attr-defined]
_pickle_module.load = pickle.load  # type: ignore[attr-defined]


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: missing, corrupt, or from another agent or environment."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def get_env_state(vec_env: VecEnv) -> bytes:
    """The full state of ``vec_env``'s environments (simulators, RNGs, wrappers, Monitor counters).

    The environment objects themselves are pickled with cloudpickle: for SB3's ``DummyVecEnv`` its copies,
    for the fast path's ``GymnasiumVecEnv`` the one vector env and its episode counters. Another
    vectorised environment needs its own branch here (and in :func:`set_env_state`).
    """
    if isinstance(vec_env, GymnasiumVecEnv):
        return cloudpickle.dumps(vec_env.get_state())
    if not isinstance(vec_env, DummyVecEnv):
        raise CheckpointError(
            f"cannot checkpoint the state of a {type(vec_env).__name__}; only DummyVecEnv and GymnasiumVecEnv"
        )
    return cloudpickle.dumps(
        {
            "envs": vec_env.envs,
            "reset_infos": vec_env.reset_infos,
            "seeds": vec_env._seeds,
            "options": vec_env._options,
        }
    )


def set_env_state(vec_env: VecEnv, state: bytes) -> None:
    """Put back into ``vec_env`` what :func:`get_env_state` captured."""
    if isinstance(vec_env, GymnasiumVecEnv):
        vec_env.set_state(_loads(state))
        return
    if not isinstance(vec_env, DummyVecEnv):
        raise CheckpointError(f"cannot restore the state of a {type(vec_env).__name__}; only DummyVecEnv")
    restored = _loads(state)
    vec_env.envs = restored["envs"]
    vec_env.reset_infos = restored["reset_infos"]
    vec_env._seeds = restored["seeds"]
    vec_env._options = restored["options"]


def rng_state() -> dict[str, Any]:
    """The state of python's, numpy's and torch's global generators (CUDA's too where present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture(
    model: BaseAlgorithm, agent: str, env_id: str, parts: Mapping[str, Stateful], logger: Logger
) -> dict[str, Any]:
    """The checkpoint dict of ``model`` now (call it at a rollout boundary); see the module docstring."""
    return {
        "format": FORMAT_VERSION,
        "agent": agent,
        "env_id": env_id,
        "observation_space": model.observation_space,
        "action_space": model.action_space,
        "step": model.num_timesteps,
        "policy": model.policy.state_dict(),
        "optimizer": model.policy.optimizer.state_dict(),
        "algorithm": {
            "num_timesteps": model.num_timesteps,
            "n_updates": model._n_updates,
            "episode_num": model._episode_num,
            "current_progress_remaining": model._current_progress_remaining,
            "last_obs": model._last_obs,
            "last_episode_starts": model._last_episode_starts,
            "last_original_obs": model._last_original_obs,
            "ep_info_buffer": list(model.ep_info_buffer),
            "ep_success_buffer": list(model.ep_success_buffer),
        },
        "env": get_env_state(model.get_env()),
        "rng": rng_state(),
        "parts": {name: part.state_dict() for name, part in parts.items()},
        "tools": [tool.state_dict() for tool in getattr(model, "tools", [])],
        "logger": {
            "values": dict(logger.name_to_value),
            "counts": dict(logger.name_to_count),
            "excluded": dict(logger.name_to_excluded),
        },
    }


def check_compatible(
    state: dict[str, Any], model: BaseAlgorithm, agent: str, env_id: str, path: Path
) -> None:
    """A CheckpointError unless ``state`` was written by this agent on this environment's spaces."""
    expected = {
        "format": FORMAT_VERSION,
        "agent": agent,
        "env_id": env_id,
        "observation_space": model.observation_space,
        "action_space": model.action_space,
    }
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} is not a nested-ac checkpoint (no {key!r})")
        if state[key] != value:
            raise CheckpointError(
                f"checkpoint {path} is incompatible with this run: its {key} is {state[key]!r}, "
                f"the run's is {value!r}"
            )


def restore(
    model: BaseAlgorithm, state: dict[str, Any], parts: Mapping[str, Stateful], logger: Logger
) -> None:
    """Put ``state`` (from :func:`capture`, checked by :func:`check_compatible`) back into a fresh run."""
    tools = getattr(model, "tools", [])
    tool_states = state["tools"] if "tools" in state else state["plasticity_tools"]  # before the rename
    if len(tools) != len(tool_states):
        raise CheckpointError(f"checkpoint has {len(tool_states)} tools, this run has {len(tools)}")
    for tool, tool_state in zip(tools, tool_states, strict=True):
        tool.rebuild(model, tool_state)  # the networks' shape first (plasticity injection), then the values
    try:
        model.policy.load_state_dict(state["policy"])
        model.policy.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint does not fit this run's networks: {first_line}") from None
    algorithm = state["algorithm"]
    model.num_timesteps = algorithm["num_timesteps"]
    model._n_updates = algorithm["n_updates"]
    model._episode_num = algorithm["episode_num"]
    model._current_progress_remaining = algorithm["current_progress_remaining"]
    model._last_obs = algorithm["last_obs"]
    model._last_episode_starts = algorithm["last_episode_starts"]
    model._last_original_obs = algorithm["last_original_obs"]
    model.ep_info_buffer = deque(algorithm["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(algorithm["ep_success_buffer"], maxlen=model._stats_window_size)
    set_env_state(model.get_env(), state["env"])
    for name, part in parts.items():
        if name in state["parts"]:  # a checkpoint from before a part existed leaves it at its start
            part.load_state_dict(state["parts"][name])
    for tool, tool_state in zip(tools, tool_states, strict=True):
        tool.load_state_dict(tool_state)
    logger.name_to_value.update(state["logger"]["values"])
    logger.name_to_count.update(state["logger"]["counts"])
    logger.name_to_excluded.update(state["logger"]["excluded"])
    set_rng_state(state["rng"])


class CheckpointStore:
    """The ``checkpoints/`` folder of a run: atomic writes of ``step_<N>.pt``, keeping the last ``keep``."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """The checkpoint files, oldest (lowest step) first; temporary files are not checkpoints."""
        if not self.directory.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.directory.iterdir() if (m := CHECKPOINT_NAME.match(p.name))
        ]
        return [path for _, path in sorted(found)]

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state`` as ``step_<state['step']>.pt`` atomically, then drop all but the last ``keep``."""
        path = self.directory / checkpoint_file(state["step"])

        def write(temporary: Path) -> None:
            with open(temporary, "wb") as file:
                torch.save(state, file)

        with writing(f"checkpoint {path}"):
            self.directory.mkdir(exist_ok=True)
        replace_atomically(path, write, f"checkpoint {path}")
        for old in self.paths()[: -self.keep]:
            old.unlink()
        return path

    def latest(self) -> Path:
        """The newest checkpoint; a CheckpointError if there is none."""
        paths = self.paths()
        if not paths:
            raise CheckpointError(f"no checkpoint in {self.directory}; nothing to resume from")
        return paths[-1]

    def load(self, path: Path) -> dict[str, Any]:
        """The checkpoint dict in ``path``; a CheckpointError naming the file if it cannot be read."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module)
        except Exception as error:  # a truncated or garbage file fails in many ways inside unpickling
            older = [p.name for p in self.paths() if p != path]
            hint = f"; move it away to resume from {older[-1]}" if older else ""
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({reason}){hint}") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path} is not a nested-ac checkpoint")
        return state


class Checkpointer(BaseCallback):
    """Writes a checkpoint every ``every`` steps (0: never) and when an interrupt was requested.

    Works at rollout boundaries: before a rollout starts, after the previous update and its fault checks,
    so a checkpoint never holds a poisoned state. After an interrupt's checkpoint it stops SB3's ``learn``
    at the first step of that rollout (``stopped_at`` is the checkpoint's step). Each checkpoint also
    commits the TensorBoard points held by ``events``.
    """

    def __init__(
        self,
        store: CheckpointStore,
        every: int,
        identity: tuple[str, str],
        parts: Mapping[str, Stateful],
        events: DeferredOutput,
        guard: InterruptGuard,
    ) -> None:
        super().__init__()
        self.store = store
        self.every = every
        self.agent, self.env_id = identity
        self.parts = parts
        self.events = events
        self.guard = guard
        self.stopped_at: int | None = None
        self._next_due = 0

    def _schedule_after(self, step: int) -> None:
        self._next_due = (step // self.every + 1) * self.every if self.every > 0 else -1

    def _on_training_start(self) -> None:
        self._schedule_after(self.model.num_timesteps)

    def _on_rollout_start(self) -> None:
        step = self.model.num_timesteps
        if self.guard.signum is not None:
            self.save()
            self.stopped_at = step
        elif 0 <= self._next_due <= step:
            self.save()
            self._schedule_after(step)

    def _on_step(self) -> bool:
        return self.stopped_at is None

    def save(self) -> Path:
        """Write the TensorBoard points up to now, then a checkpoint of the run that records the event
        files' sizes (a crash between the two is undone by the resume's rewind)."""
        state = capture(self.model, self.agent, self.env_id, self.parts, self.logger)
        with writing("a TensorBoard event file"):
            self.events.flush()
        state["events"] = event_file_sizes(self.store.directory.parent)
        return self.store.save(state)
