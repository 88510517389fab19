"""Non-stationary Gymnasium environments; importing this package registers them under ``nested_ac/``."""

from nested_ac.envs.classic import classic_worlds
from nested_ac.envs.effects import TaskEffect
from nested_ac.envs.nsgym import NSGymAdapter, from_ns_gym
from nested_ac.envs.registry import NONSTATIONARY_ENVS, register_nonstationary, resolve_env_id
from nested_ac.envs.schedules import Cyclic, EveryNSteps, Explicit, RandomDraw, TaskSchedule
from nested_ac.envs.vector import GymnasiumVecEnv, native_vector
from nested_ac.envs.worlds import World, register_world
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

for _name, (_world, _changes, _floor) in classic_worlds().items():
    register_world(_name, _world, changes=_changes, default_every=100_000, return_floor=_floor)
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
    changes="Ant-v5 friction log-uniform in [0.02, 2] (Dohare et al., Nature 2024); Ant-v3 settings: kwargs",
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
    "NSGymAdapter",
    "OffsetObservation",
    "PermuteActions",
    "PermuteObservation",
    "RandomDraw",
    "ScaleReward",
    "TaskSchedule",
    "TaskEffect",
    "TaskWrapper",
    "VectorTaskWrapper",
    "World",
    "from_ns_gym",
    "native_vector",
    "register_nonstationary",
    "register_world",
    "resolve_env_id",
]
