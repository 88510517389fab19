"""The fast path: Gymnasium's numpy-vectorized environments behind Stable-Baselines3's ``VecEnv`` interface.

SB3 rejects ``gymnasium.vector`` environments; :class:`GymnasiumVecEnv` adapts one that resets with
same-step autoreset to SB3's semantics: on ``done`` the returned observation is the new episode's first,
``infos[i]["terminal_observation"]`` holds the last one, ``infos[i]["TimeLimit.truncated"]`` marks a
time limit, and ``infos[i]["episode"] = {"r", "l", "t"}`` is what SB3's ``Monitor`` would record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn


def autoreset_mode(env: gym.vector.VectorEnv) -> Any:
    return env.metadata.get("autoreset_mode")


class SameStepCartPoleVectorEnv(CartPoleVectorEnv):
    """Gymnasium's numpy CartPole with same-step autoreset: a finished copy restarts within the step.

    Gymnasium's version resets a finished copy on the *next* step (which ignores that step's action),
    which SB3's semantics cannot express; this one returns the first observation of the new episode at
    once and the last one in ``info["final_obs"]`` (Gymnasium's ``AutoresetMode.SAME_STEP``).
    """

    metadata = {**CartPoleVectorEnv.metadata, "autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        observations, rewards, terminated, truncated, info = super().step(action)
        done = self.prev_done
        if done.any():
            final = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                final[i] = observations[i]
            info = {**info, "final_obs": final, "_final_obs": done.copy()}
            self.state[:, done] = self.np_random.uniform(low=self.low, high=self.high, size=(4, done.sum()))
            self.steps[done] = 0
            observations = self.state.T.astype(np.float32)
            self.prev_done = np.zeros(self.num_envs, dtype=np.bool_)
        return observations, rewards, terminated, truncated, info


class GymnasiumVecEnv(VecEnv):
    """SB3 ``VecEnv`` over a ``gymnasium.vector.VectorEnv`` with same-step autoreset (see the module doc).

    ``env_method``, ``get_attr`` and ``set_attr`` reach the outermost layer of the vector env that has the
    name (every copy shares it: a vector env is one object), so ``env_method("set_task", k)`` switches
    every copy at once; methods cannot target a subset of copies.
    """

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        if autoreset_mode(env) != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(f"GymnasiumVecEnv needs same-step autoreset, {env} has {autoreset_mode(env)}")
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._start = time.time()

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds else None
        observations, _ = self.env.reset(seed=seed, options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0
        self._lengths[:] = 0
        return observations

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        observations, rewards, terminated, truncated, info = self.env.step(self._actions)
        self._returns += rewards
        self._lengths += 1
        dones = np.logical_or(terminated, truncated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos[i]["episode"] = {
                "r": round(float(self._returns[i]), 6),
                "l": int(self._lengths[i]),
                "t": round(time.time() - self._start, 6),
            }
        self._returns[dones] = 0
        self._lengths[dones] = 0
        return observations, np.asarray(rewards, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def _owner(self, name: str) -> Any:
        """The outermost layer of the vector env that has ``name``; AttributeError if none does."""
        if hasattr(type(self.env), name) or name in vars(self.env):
            return self.env
        layer = self.env
        while (layer := getattr(layer, "env", None)) is not None:
            if hasattr(type(layer), name) or name in vars(layer):
                return layer
        raise AttributeError(f"{type(self.env).__name__} has no attribute {name!r}")

    def _count(self, indices: VecEnvIndices) -> int:
        chosen = list(self._get_indices(indices))
        if len(chosen) != self.num_envs:
            raise ValueError("a vector env's copies share one object: address all of them (indices=None)")
        return len(chosen)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self._owner(attr_name), attr_name)
        return [value] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._count(indices)
        setattr(self._owner(attr_name), attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: VecEnvIndices = None, **kwargs: Any) -> list:
        result = getattr(self._owner(method_name), method_name)(*args, **kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly (pickle it with cloudpickle): env, counters, seeds."""
        return {
            "env": self.env,
            "returns": self._returns.copy(),
            "lengths": self._lengths.copy(),
            "seeds": list(self._seeds),
            "options": list(self._options),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.env = state["env"]
        self._returns, self._lengths = state["returns"], state["lengths"]
        self._seeds, self._options = state["seeds"], state["options"]


def native_vector(env_id: str, n_envs: int, kwargs: dict[str, Any]) -> GymnasiumVecEnv | None:
    """``n_envs`` copies of ``env_id`` through its same-step vector entry point, or None if it has none."""
    spec = gym.spec(env_id)
    if spec.vector_entry_point is None:
        return None
    env = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **kwargs)
    if autoreset_mode(env) != gym.vector.AutoresetMode.SAME_STEP:
        env.close()
        return None
    return GymnasiumVecEnv(env)
