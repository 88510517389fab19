"""ContinualPPO's update is Stable-Baselines3's PPO update, number for number."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

import envs  # noqa: F401  (registers the permuted CartPole)
from agents import ContinualPPO

SMALL = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "seed": 0}
NETS = {"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.ReLU}


def trained(cls: type[PPO], **kwargs) -> PPO:
    env = make_vec_env("nested_ac/PermutedCartPole-v0", n_envs=2, seed=0, env_kwargs={"task_seed": 0})
    model = cls("MlpPolicy", env, policy_kwargs=NETS, **SMALL, **kwargs)
    model.learn(384)  # 3 updates of 4 minibatches x 2 epochs
    return model


def test_continual_ppo_matches_sb3_ppo_bit_for_bit():
    ours, theirs = trained(ContinualPPO, engine="sb3"), trained(PPO)
    pairs = list(zip(ours.policy.state_dict().values(), theirs.policy.state_dict().values(), strict=True))
    assert all(torch.equal(p, q) for p, q in pairs)
    assert not torch.equal(
        pairs[0][0], trained(PPO, learning_rate=1e-3).policy.state_dict()["mlp_extractor.policy_net.0.weight"]
    )


def test_continual_ppo_matches_sb3_ppo_with_value_clipping_and_target_kl():
    kwargs = {"clip_range_vf": 0.1, "target_kl": 1e-4, "learning_rate": 3e-3}
    ours, theirs = trained(ContinualPPO, engine="sb3", **kwargs), trained(PPO, **kwargs)
    assert ours._n_updates == theirs._n_updates < 6  # the KL limit stopped some of the 3 x 2 epochs early
    for p, q in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert torch.equal(p, q)


def one_update(engine: str, **kwargs) -> ContinualPPO:
    """A model that collected one rollout with the exact engine's policy (seed 0) and made one update from
    it with ``engine``: both engines start from the same parameters and the same rollout buffer."""
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = ContinualPPO("MlpPolicy", env, engine=engine, policy_kwargs=NETS, **{**SMALL, **kwargs})
    collector = ContinualPPO("MlpPolicy", env, engine="sb3", policy_kwargs=NETS, **{**SMALL, **kwargs})
    collector.learn(1)  # one rollout (and one update, which changes nothing the model uses)
    model.rollout_buffer = collector.rollout_buffer
    model.policy.load_state_dict(trained_start(kwargs))
    model.set_logger(Logger(None, []))
    np.random.seed(1)
    model.train()
    return model


def trained_start(kwargs: dict) -> dict:
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    return ContinualPPO("MlpPolicy", env, engine="sb3", policy_kwargs=NETS, **{**SMALL, **kwargs}).policy.state_dict()


@pytest.mark.parametrize("kwargs", [{}, {"ent_coef": 0.01, "clip_range_vf": 0.2}])
def test_fast_engine_update_equals_the_exact_one_to_float_rounding(kwargs):
    fast, exact = one_update("fast", **kwargs), one_update("sb3", **kwargs)
    start = trained_start(kwargs)
    assert fast.policy.optimizer.param_groups[0]["fused"] and not exact.policy.optimizer.param_groups[0]["fused"]
    for (name, p), q in zip(fast.policy.state_dict().items(), exact.policy.state_dict().values(), strict=True):
        assert not torch.equal(q, start[name])  # the update moved every tensor
        assert torch.linalg.vector_norm(p - q) <= 1e-5 * torch.linalg.vector_norm(q), name
