"""policy_networks finds the actor and every critic with their hidden layers, activations and heads."""

from __future__ import annotations

import pytest
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from nested_ac.agents import ContinualPPO
from nested_ac.agents.nested import NestedPPO
from nested_ac.networks import mlp_network, policy_networks


def test_ppo_has_an_actor_and_a_critic():
    env = make_vec_env("CartPole-v1", n_envs=1)
    model = ContinualPPO(
        "MlpPolicy",
        env,
        n_steps=64,
        batch_size=64,
        policy_kwargs={"net_arch": {"pi": [32, 16], "vf": [8]}, "activation_fn": nn.ReLU},
    )
    actor, critic = policy_networks(model.policy)
    assert (actor.name, critic.name) == ("actor", "critic")
    assert [layer.out_features for layer in actor.hidden] == [32, 16]
    assert all(isinstance(a, nn.ReLU) for a in actor.activations)
    assert actor.output is model.policy.action_net and critic.output is model.policy.value_net
    assert actor.outgoing(0) is actor.hidden[1] and actor.outgoing(1) is actor.output
    assert len(actor.parameters()) == 6 and len(critic.parameters()) == 4


def test_nested_policy_lists_every_critic():
    env = make_vec_env("CartPole-v1", n_envs=1)
    model = NestedPPO("MlpPolicy", env, levels=3, n_steps=64, batch_size=64)
    names = [network.name for network in policy_networks(model.policy)]
    assert names == ["actor", "critic_1", "critic_2", "critic_3"]


def test_a_network_that_is_not_linear_activation_pairs_is_rejected():
    with pytest.raises(ValueError, match="not a sequence of Linear"):
        mlp_network("odd", nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 1))
