"""Non-stationary classic-control environments."""

from __future__ import annotations

import gymnasium as gym

from envs.wrappers import PermuteObservation


def permuted_cartpole(task_seed: int = 0, **kwargs) -> gym.Env:
    """CartPole-v1 whose 4 observation entries are permuted and sign-flipped anew for each task.

    What changes: the meaning of each input of the agent (``PermuteObservation``); the dynamics, actions
    and rewards stay those of CartPole. Default: a new task every 200 000 steps. A fresh network learns
    each task, so a drop in the return after a switch measures lost plasticity (cf. Dohare et al.,
    Nature 2024, and the permuted-input benchmarks of Elsayed & Mahmood, ICLR 2024).
    """
    return PermuteObservation(gym.make("CartPole-v1", **kwargs), task_seed=task_seed)
