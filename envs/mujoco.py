"""Non-stationary MuJoCo environments (entry points of the ``nested_ac/`` ids)."""

from __future__ import annotations

import gymnasium as gym

from nested_ac.envs.effects import FrictionDrift, MassScale
from nested_ac.envs.wrappers import TaskWrapper


def slippery_ant(task_seed: int = 0, **kwargs) -> gym.Env:
    """SlipperyAnt (Dohare et al., "Loss of plasticity in deep continual learning", Nature 2024): Gymnasium's
    Ant-v5 whose friction coefficient is drawn log-uniformly in [0.02, 2] for each task; default: a new
    task every 2 000 000 steps, as in the paper. The friction is written into the simulator's model
    (``model.geom_friction[:, 0]`` of every geom, so each foot-floor contact uses the drawn value) and
    logged as ``task/friction``.
    """
    return TaskWrapper(gym.make("Ant-v5", **kwargs), FrictionDrift(0.02, 2.0), task_seed)


def heavy_cheetah(task_seed: int = 0, **kwargs) -> gym.Env:
    """HalfCheetah-v5 whose body masses are all scaled by one factor drawn log-uniformly in [0.5, 2] for
    each task (logged as ``task/mass_scale``); default: a new task every 1 000 000 steps. Changing
    dynamics in MuJoCo as in Dohare et al., Nature 2024 (SlipperyAnt) and Abbas et al., CoLLAs 2023.
    """
    return TaskWrapper(gym.make("HalfCheetah-v5", **kwargs), MassScale(0.5, 2.0), task_seed)
