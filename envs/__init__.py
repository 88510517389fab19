"""Non-stationary Gymnasium environments; importing this package registers them under ``nested_ac/``."""

import math

from nested_ac.envs.effects import TaskEffect
from nested_ac.envs.registry import NONSTATIONARY_ENVS, register_nonstationary, resolve_env_id
from nested_ac.envs.schedules import Cyclic, EveryNSteps, Explicit, RandomDraw, TaskSchedule
from nested_ac.envs.vector import GymnasiumVecEnv, native_vector
from nested_ac.envs.wrappers import (
    DriftAttribute,
    FlipActions,
    OffsetObservation,
    PermuteActions,
    PermuteObservation,
    ScaleReward,
    TaskWrapper,
    VectorTaskWrapper,
)

register_nonstationary(
    "PermutedCartPole-v0",
    "nested_ac.envs.classic:permuted_cartpole",
    changes="observation permuted and sign-flipped",
    default_every=200_000,
    vector_entry_point="nested_ac.envs.classic:permuted_cartpole_vector",
)
register_nonstationary(
    "DriftingCartPole-v0",
    "nested_ac.envs.classic:drifting_cartpole",
    changes="gravity in [4.9, 19.6] and pole half-length in [0.25, 1] m redrawn",
    default_every=100_000,
    vector_entry_point="nested_ac.envs.classic:drifting_cartpole_vector",
)
register_nonstationary(
    "DriftingAcrobot-v0",
    "nested_ac.envs.classic:drifting_acrobot",
    changes="both link masses redrawn log-uniform in [0.5, 2] kg",
    default_every=100_000,
    return_floor=-500.0,  # -1 per step, episodes truncated at 500 steps
)
register_nonstationary(
    "DriftingPendulum-v0",
    "nested_ac.envs.classic:drifting_pendulum",
    changes="gravity in [5, 15] and mass log-uniform in [0.5, 2] redrawn",
    default_every=100_000,
    return_floor=-200 * (math.pi**2 + 0.1 * 8**2 + 0.001 * 2**2),  # 200 steps at the worst cost each
)
register_nonstationary(
    "TwoTaskCartPole-v0",
    "nested_ac.envs.classic:TwoTasks",
    changes="two tasks: plain CartPole (0) and permuted observation (1), for forgetting",
    default_every=50_000,
    default_kind="cyclic",
    default_tasks=(0, 1),
)
register_nonstationary(
    "SlipperyAnt-v0",
    "nested_ac.envs.mujoco:slippery_ant",
    changes="Ant-v5 friction log-uniform in [0.02, 2] (Dohare et al., Nature 2024)",
    default_every=2_000_000,
)
register_nonstationary(
    "HeavyCheetah-v0",
    "nested_ac.envs.mujoco:heavy_cheetah",
    changes="HalfCheetah-v5 body masses scaled by a factor log-uniform in [0.5, 2]",
    default_every=1_000_000,
)

__all__ = [
    "NONSTATIONARY_ENVS",
    "Cyclic",
    "DriftAttribute",
    "EveryNSteps",
    "Explicit",
    "FlipActions",
    "GymnasiumVecEnv",
    "OffsetObservation",
    "PermuteActions",
    "PermuteObservation",
    "RandomDraw",
    "ScaleReward",
    "TaskSchedule",
    "TaskEffect",
    "TaskWrapper",
    "VectorTaskWrapper",
    "native_vector",
    "register_nonstationary",
    "resolve_env_id",
]
