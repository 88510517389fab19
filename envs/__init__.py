"""Non-stationary Gymnasium environments; importing this package registers them under ``nested_ac/``."""

from envs.registry import NONSTATIONARY_ENVS, register_nonstationary, resolve_env_id
from envs.schedules import EveryNSteps
from envs.wrappers import PermuteObservation, TaskWrapper

register_nonstationary(
    "PermutedCartPole-v0",
    "envs.classic:permuted_cartpole",
    changes="observation permuted and sign-flipped",
    default_every=200_000,
)

__all__ = [
    "NONSTATIONARY_ENVS",
    "EveryNSteps",
    "PermuteObservation",
    "TaskWrapper",
    "register_nonstationary",
    "resolve_env_id",
]
