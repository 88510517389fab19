"""Actor-critic agents on Stable-Baselines3; importing this package registers them for ``--agent``."""

from agents.ppo import ContinualPPO
from nested_ac.registry import AGENTS

AGENTS.register("ppo", "PPO (Stable-Baselines3) with separate ReLU actor and critic MLPs", ContinualPPO)

__all__ = ["ContinualPPO"]
