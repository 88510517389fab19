"""nested-ac: continual reinforcement learning on non-stationary Gymnasium environments."""

__version__ = "0.1.0"
