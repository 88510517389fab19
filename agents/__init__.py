"""Actor-critic agents on Stable-Baselines3; importing this package registers them for ``--agent``."""

from nested_ac.agents.nested import NestedPPO
from nested_ac.agents.ppo import ContinualPPO
from nested_ac.registry import AGENTS

AGENTS.register("ppo", "PPO (Stable-Baselines3) with separate ReLU actor and critic MLPs", ContinualPPO)
AGENTS.register(
    "nested-ppo",
    "PPO with K nested critics, each outer one a slowly moving learned loss for the inner (nested.*)",
    NestedPPO,
)

__all__ = ["ContinualPPO", "NestedPPO"]
