"""Non-stationary MuJoCo environments (entry points of the ``nested_ac/`` ids)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from nested_ac.envs.effects import FrictionDrift, MassScale
from nested_ac.envs.wrappers import TaskWrapper, TimeLimitAsTermination, unbounded_actions, zero_padded
from nested_ac.errors import ConfigError

# Ant-v3's observation (gym 0.23) ends with the 84 contact forces of its 14 bodies (the world's included),
# which mujoco-py 2.x never computes: they read 0 there, and so does the contact cost.
ANT_V3_CONTACT_FORCES = 84


def slippery_ant(
    task_seed: int = 0,
    zero_contact_forces: bool = False,
    unclipped_actions: bool = False,
    time_limit_terminates: bool = False,
    **kwargs: Any,
) -> gym.Env:
    """SlipperyAnt (Dohare et al., "Loss of plasticity in deep continual learning", Nature 2024): Gymnasium's
    Ant-v5 whose friction coefficient is drawn log-uniformly in [0.02, 2] for each task; default: a new
    task every 2 000 000 steps, as in the paper. The friction is written into the simulator's model
    (``model.geom_friction[:, 0]`` of every geom, so each foot-floor contact uses the drawn value, as the
    authors' friction of the default geom class does) and logged as ``task/friction``. ``kwargs`` go to
    Ant-v5.

    The authors ran Ant-v3 (gym 0.23 on mujoco-py 2.1). Ant-v5 is the same robot, reward terms (forward
    velocity of the torso, healthy reward 1, control cost 0.5·Σa², contact cost 5e-4·Σclip(F)²), healthy
    z range [0.2, 1], frame skip 5, reset noise 0.1 and 1000-step episodes, but differs in:

    - the contact forces: v3's observation has 111 entries, 27 positions and velocities and 84 contact
      forces (14 bodies × 6), which mujoco-py 2.x leaves at 0 (gym issue #1541), so its contact cost is 0
      too; v5's has 105, its 78 contact forces (the world's left out) real and charged.
      ``zero_contact_forces=True`` gives v3 as the authors ran it: the 27 entries and 84 zeros (the first
      layer's fan-in, and so its LeCun bound, is v3's), ``contact_cost_weight`` 0;
    - the healthy reward on the step that ends an episode by falling: v3 pays it, v5 does not (at most 1
      per episode; no setting changes it).

    Two settings reproduce what the authors' agent did with the env rather than the env itself:
    ``unclipped_actions`` widens the action space to ±3.4e38 (float32's largest; SB3 needs finite
    bounds), so the Gaussian policy's sample reaches the env unclipped, as their agent sent it (MuJoCo
    clamps the motor controls to [-1, 1], the control cost is charged on the sample; SB3 otherwise clips
    the sample to [-1, 1] first), and ``time_limit_terminates`` ends an episode cut at 1000 steps as a
    termination (no bootstrap from V there, as their PPO read gym's single ``done`` flag:
    :class:`~nested_ac.envs.wrappers.TimeLimitAsTermination`).
    """
    if zero_contact_forces:
        clash = {"include_cfrc_ext_in_observation", "contact_cost_weight"} & set(kwargs)
        if clash:
            raise ConfigError(f"SlipperyAnt's zero_contact_forces sets {', '.join(sorted(clash))} itself")
        kwargs = {**kwargs, "include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.0}
    env = gym.make("Ant-v5", **kwargs)
    if zero_contact_forces:
        env = zero_padded(env, ANT_V3_CONTACT_FORCES)
    if unclipped_actions:
        env = unbounded_actions(env)
    if time_limit_terminates:
        env = TimeLimitAsTermination(env)
    return TaskWrapper(env, FrictionDrift(0.02, 2.0), task_seed)


def heavy_cheetah(task_seed: int = 0, **kwargs) -> gym.Env:
    """HalfCheetah-v5 whose body masses are all scaled by one factor drawn log-uniformly in [0.5, 2] for
    each task (logged as ``task/mass_scale``); default: a new task every 1 000 000 steps. Changing
    dynamics in MuJoCo as in Dohare et al., Nature 2024 (SlipperyAnt) and Abbas et al., CoLLAs 2023.
    """
    return TaskWrapper(gym.make("HalfCheetah-v5", **kwargs), MassScale(0.5, 2.0), task_seed)
