"""Actor-critic agents on Stable-Baselines3 (``--agent`` choices are registered in ``nested_ac.build``)."""

from nested_ac.agents.nested import NestedPPO
from nested_ac.agents.ppo import ContinualPPO

__all__ = ["ContinualPPO", "NestedPPO"]
