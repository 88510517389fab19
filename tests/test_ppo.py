"""ContinualPPO's update is Stable-Baselines3's PPO update, number for number."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger

from nested_ac import envs  # noqa: F401  (registers the permuted CartPole)
from nested_ac.agents import ContinualPPO
from nested_ac.agents.ppo import ENGINES

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


def untrained(engine: str, env_id: str = "CartPole-v1", **kwargs) -> ContinualPPO:
    env = make_vec_env(env_id, n_envs=8, seed=0)
    return ContinualPPO("MlpPolicy", env, engine=engine, policy_kwargs=NETS, **{**SMALL, **kwargs})


def one_update(engine: str, **kwargs) -> ContinualPPO:
    """A model with ``engine`` after one update from the same parameters (seed 0) on the same rollout
    buffer (one rollout collected by the exact engine) with the same minibatch order."""
    collector = untrained("sb3", **kwargs)
    collector.learn(1)  # one rollout (and an update of the collector, not used)
    model = untrained(engine, **kwargs)
    model.rollout_buffer = collector.rollout_buffer
    model.set_logger(Logger(None, []))
    np.random.seed(1)
    model.train()
    return model


TRAIN_AND_SAVE = """
import sys
from nested_ac.config import RunConfig
from nested_ac.train import train
config = RunConfig(seed=0, steps=1024, run_dir=sys.argv[1], progress_bar=False)
config.env.n_envs, config.ppo.n_steps, config.ppo.batch_size, config.ppo.n_epochs = 2, 256, 128, 2
config.optimizer.name, config.cbp.enabled = sys.argv[2], sys.argv[3] == "cbp"
config.checkpoint.every = 512
train(config)  # checkpoints and the final model saved: the optimizer's state_dict written
print("torch._dynamo" in sys.modules)
"""


@pytest.mark.parametrize(("optimizer", "tool"), [("adam", "-"), ("adam", "cbp"), ("upgd", "-")])
def test_training_with_our_optimizers_does_not_import_torchs_compiler(tmp_path, optimizer, tool):
    """torch marks four Optimizer methods with torch._disable_dynamo, whose first call imports torch._dynamo
    (≈ 1 s of a short run); nested-ac's optimizers (FlatAdam, ElementwiseAdam, UPGD) run them unmarked."""
    command = [sys.executable, "-c", TRAIN_AND_SAVE, str(tmp_path / "runs"), optimizer, tool]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "False", result.stdout + result.stderr
    assert list(tmp_path.glob("runs/*/checkpoints/*.pt")) and list(tmp_path.glob("runs/*/model.zip"))


@pytest.mark.parametrize(
    "kwargs", [{}, {"ent_coef": 0.01, "clip_range_vf": 0.2}, {"env_id": "Pendulum-v1", "ent_coef": 0.01}]
)
def test_fast_engine_update_equals_the_exact_one_to_float_rounding(kwargs):
    fast, exact = one_update("fast", **kwargs), one_update("sb3", **kwargs)
    start = untrained("sb3", **kwargs).policy.state_dict()
    assert fast.policy.optimizer.param_groups[0]["fused"]
    assert not exact.policy.optimizer.param_groups[0]["fused"]
    assert fast._hand is not None and exact._hand is None  # the fast engine's gradient is written by hand
    for name, p in fast.policy.state_dict().items():
        q = exact.policy.state_dict()[name]
        assert not torch.equal(q, start[name])  # the update moved every tensor
        assert torch.linalg.vector_norm(p - q) <= 1e-5 * torch.linalg.vector_norm(q), name


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_direct_log_density_and_entropy_equal_sb3_distributions(env_id):
    env = make_vec_env(env_id, n_envs=4, seed=0)
    direct, sb3 = (ContinualPPO("MlpPolicy", env, engine=e, seed=0).policy for e in ("fast", "sb3"))
    assert direct.direct and not sb3.direct
    obs = torch.randn(64, *env.observation_space.shape)
    rollouts = []
    for policy in (direct, sb3):
        torch.manual_seed(3)
        with torch.no_grad():
            rollouts.append(policy(obs))
    for ours, theirs in zip(*rollouts, strict=True):  # actions, values, log-probabilities
        assert ours.shape == theirs.shape and torch.allclose(ours.float(), theirs.float(), atol=1e-5)
    actions = rollouts[1][0].float()
    if env_id == "CartPole-v1":
        actions = actions.long().flatten()
    evaluated = direct.evaluate_actions(obs, actions), sb3.evaluate_actions(obs, actions)
    for ours, theirs in zip(*evaluated, strict=True):  # values, log-probabilities, entropies
        assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)


def gradients(model: ContinualPPO, batch, clip_range_vf: float | None, by_hand: bool) -> dict:
    """The gradient of ``model``'s loss on ``batch``, by hand or by autograd (None where it has none)."""
    model._hand = model._choose_gradient()
    assert model._hand is not None
    loss, _, _ = model._loss(batch, 0.2, clip_range_vf, defaultdict(list), by_hand=by_hand)
    assert (loss.grad_fn is None) == by_hand
    if by_hand:
        model._hand.backward(*model._loss_derivatives)
    else:
        model.policy.optimizer.zero_grad()
        loss.backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.policy.named_parameters()}


def assert_gradient_by_hand_equals_autograd(model: ContinualPPO, clip_range_vf=None, untrained=()) -> None:
    """On the rollout buffer's first minibatch: every gradient nonzero and equal to autograd's to 1e-5
    relative, but those of the parameters ``untrained`` (by name), None both ways."""
    batch = next(iter(next(model._minibatches())))
    if clip_range_vf == "median":  # the median change of V: half the values clipped
        with torch.no_grad():
            change = model.policy.predict_values(batch.observations).flatten() - batch.old_values
        clip_range_vf = change.abs().median().item()
    by_hand = gradients(model, batch, clip_range_vf, by_hand=True)
    autograd = gradients(model, batch, clip_range_vf, by_hand=False)
    for name, grad in autograd.items():
        if name in untrained:
            assert grad is None and by_hand[name] is None, name
            continue
        assert torch.linalg.vector_norm(grad) > 0, name
        assert torch.linalg.vector_norm(by_hand[name] - grad) <= 1e-5 * torch.linalg.vector_norm(grad), name


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.Tanh])
@pytest.mark.parametrize("ent_coef, clip_values", [(0.0, False), (0.05, True)])
def test_gradient_by_hand_equals_autograd(env_id, activation, ent_coef, clip_values):
    env = make_vec_env(env_id, n_envs=8, seed=0)
    nets = {**NETS, "activation_fn": activation}
    model = ContinualPPO("MlpPolicy", env, policy_kwargs=nets, ent_coef=ent_coef, **{**SMALL, "n_epochs": 3})
    model.learn(1024)  # a few updates: ratios away from 1, some clipped
    model.set_logger(Logger(None, []))
    assert_gradient_by_hand_equals_autograd(model, "median" if clip_values else None)


class Doubled(torch.nn.Linear):
    """A Linear layer with its own forward: twice the affine map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def _rebuild_optimizer(policy) -> None:
    """The policy's optimizer made anew over its parameters now (as after changing its layers)."""
    lr = policy.optimizer.param_groups[0]["lr"]
    policy.optimizer = type(policy.optimizer)(policy.parameters(), lr=lr, **policy.optimizer_kwargs)


def _freeze_log_std(policy) -> None:
    policy.log_std.requires_grad_(False)


def _zero_gradient_hook(policy) -> None:
    policy.mlp_extractor.policy_net[0].weight.register_hook(lambda g: 0 * g)


def _doubling_forward_hook(policy) -> None:
    policy.mlp_extractor.policy_net[1].register_forward_hook(lambda module, inputs, output: 2 * output)


def _weight_norm(policy) -> None:
    torch.nn.utils.parametrizations.weight_norm(policy.mlp_extractor.policy_net[0])
    _rebuild_optimizer(policy)


def _linear_subclass(policy) -> None:
    layer = policy.mlp_extractor.policy_net[0]
    doubled = Doubled(layer.in_features, layer.out_features)
    doubled.load_state_dict(layer.state_dict())
    policy.mlp_extractor.policy_net[0] = doubled
    _rebuild_optimizer(policy)


# A change to the policy that autograd honours and a hand-written gradient would not, the env it is tried on,
# and what the run's log names as the reason for taking autograd.
NOT_BY_HAND = {
    "frozen log_std": (_freeze_log_std, "Pendulum-v1", "parameter log_std does not require a gradient"),
    "gradient hook": (_zero_gradient_hook, "CartPole-v1", "has a gradient hook"),
    "forward hook": (_doubling_forward_hook, "CartPole-v1", "has a forward hook not marked observes_only"),
    "weight_norm": (_weight_norm, "Pendulum-v1", "is parametrized"),
    "Linear subclass": (_linear_subclass, "CartPole-v1", "is a Doubled, not exactly torch.nn.Linear"),
}


def changed_update(engine: str, change, env_id: str) -> ContinualPPO:
    """:func:`one_update` of a model whose policy ``change`` altered (on the unchanged one's rollout)."""
    collector = untrained("sb3", env_id)
    collector.learn(1)
    model = untrained(engine, env_id)
    change(model.policy)
    model.rollout_buffer = collector.rollout_buffer
    model.set_logger(Logger(None, []))
    np.random.seed(1)
    model.train()
    return model


@pytest.mark.parametrize("case", list(NOT_BY_HAND))
def test_what_autograd_honours_gives_the_same_update_on_both_engines(case):
    change, env_id, reason = NOT_BY_HAND[case]
    start = untrained("sb3", env_id)
    change(start.policy)
    fast, exact = (changed_update(engine, change, env_id) for engine in ("fast", "sb3"))
    moved = 0
    for (name, p), q in zip(fast.policy.named_parameters(), exact.policy.parameters(), strict=True):
        assert torch.linalg.vector_norm(p - q) <= 1e-5 * torch.linalg.vector_norm(q), name
        moved += not torch.equal(q, dict(start.policy.named_parameters())[name])
    assert moved > 0
    said = fast.logger.name_to_value["engine/gradient"]
    assert said.startswith("autograd: ") and reason in said, said
    if case == "frozen log_std":
        assert torch.equal(fast.policy.log_std, start.policy.log_std)
    if case == "gradient hook":
        weight = "mlp_extractor.policy_net.0.weight"
        assert torch.equal(dict(fast.policy.named_parameters())[weight], start.policy.state_dict()[weight])


class Recorded(KVWriter):
    """An SB3 output that keeps what it is given."""

    def __init__(self) -> None:
        self.writes: list[dict] = []

    def write(self, key_values, key_excluded, step=0) -> None:
        self.writes.append(dict(key_values))


@pytest.mark.parametrize("engine", ENGINES)
def test_the_run_says_once_which_gradient_path_it_takes_and_why(engine):
    model = untrained(engine)
    output = Recorded()
    model.set_logger(Logger(None, [output]))
    model.learn(4 * 64 * 8)  # four updates
    said = [write["engine/gradient"] for write in output.writes if "engine/gradient" in write]
    expected = {
        "fast": "written by hand (autograd's gradient: every rule of nested_ac.agents.by_hand holds)",
        "sb3": "autograd: ppo.engine is 'sb3' (Stable-Baselines3's update, number for number)",
    }
    assert said == [expected[engine]]
    if engine == "fast":  # a hook added later: the path changes, and the log says so once more
        _zero_gradient_hook(model.policy)
        model.learn(2 * 64 * 8, reset_num_timesteps=False)
        said = [write["engine/gradient"] for write in output.writes if "engine/gradient" in write]
        assert said[1:] == ["autograd: parameter mlp_extractor.policy_net.0.weight has a gradient hook"]
