"""ContinualPPO's update is Stable-Baselines3's PPO update, number for number."""

from __future__ import annotations

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

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
    ours, theirs = trained(ContinualPPO), trained(PPO)
    pairs = list(zip(ours.policy.state_dict().values(), theirs.policy.state_dict().values(), strict=True))
    assert all(torch.equal(p, q) for p, q in pairs)
    assert not torch.equal(
        pairs[0][0], trained(PPO, learning_rate=1e-3).policy.state_dict()["mlp_extractor.policy_net.0.weight"]
    )


def test_continual_ppo_matches_sb3_ppo_with_value_clipping_and_target_kl():
    kwargs = {"clip_range_vf": 0.1, "target_kl": 1e-4, "learning_rate": 3e-3}
    ours, theirs = trained(ContinualPPO, **kwargs), trained(PPO, **kwargs)
    assert ours._n_updates == theirs._n_updates < 6  # the KL limit stopped some of the 3 x 2 epochs early
    for p, q in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert torch.equal(p, q)
