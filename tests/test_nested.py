"""NestedPPO: PPO's numbers at K = 1 or κ = 0, slower outer critics, freezing, the κ term, save/load, CLI."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from stable_baselines3 import PPO
from torch import nn

from nested_ac import envs  # noqa: F401  (registers the permuted CartPole)
from nested_ac.agents import ContinualPPO, NestedPPO
from nested_ac.build import build_agent, policy_kwargs, sb3_ppo_kwargs
from nested_ac.config import RunConfig
from nested_ac.hooks import Tool
from nested_ac.train import make_env
from tests.conftest import FAST, read_scalars
from tests.test_ppo import assert_gradient_by_hand_equals_autograd


def small_config(optimizer: str = "adam", engine: str = "fast", **nested) -> RunConfig:
    config = RunConfig(seed=0, steps=512)
    config.optimizer.name = optimizer
    config.ppo.engine = engine
    config.env.n_envs = 2
    config.ppo.n_steps, config.ppo.batch_size, config.ppo.n_epochs = 64, 32, 2
    for key, value in nested.items():
        setattr(config.nested, key, value)
    return config


def trained(
    cls: type[ContinualPPO],
    steps: int = 384,
    tools=(),
    optimizer: str = "adam",
    engine: str = "fast",
    **nested,
) -> ContinualPPO:
    config = small_config(optimizer, engine, **nested)
    config.agent = "nested-ppo" if cls is NestedPPO else "ppo"
    model = build_agent(config, make_env(config))
    model.tools = list(tools)
    model.learn(steps)  # 384 steps: 3 updates of 2 epochs x 4 minibatches
    return model


def base_state(model: PPO) -> dict[str, torch.Tensor]:
    """The actor's and the inner critic's parameters (everything PPO has)."""
    return {k: v for k, v in model.policy.state_dict().items() if not k.startswith("outer_")}


def critic_vector(model: NestedPPO, level: int) -> torch.Tensor:
    mlp, head = model.policy.critics()[level - 1]
    return torch.cat([p.detach().flatten().clone() for p in [*mlp.parameters(), *head.parameters()]])


class Snapshots(Tool):
    """Every critic's parameters before each update (after each rollout)."""

    def __init__(self) -> None:
        self.taken: list[list[torch.Tensor]] = []

    def on_rollout_end(self, model) -> None:
        self.taken.append([critic_vector(model, k) for k in range(1, model.policy.levels + 1)])


def test_one_level_or_zero_kappa_gives_exactly_ppo():
    config = small_config(engine="sb3")
    plain = PPO("MlpPolicy", make_env(config), **sb3_ppo_kwargs(config))
    plain.learn(384)
    exact = base_state(trained(NestedPPO, engine="sb3", levels=1))
    assert all(torch.equal(exact[key], value) for key, value in base_state(plain).items())
    reference = base_state(trained(ContinualPPO))  # the fast engine: nested-ppo equals its ppo
    for nested in ({"levels": 1}, {"levels": 2, "kappa": 0.0}, {"levels": 3, "kappa": 0.0, "mode": "polyak"}):
        state = base_state(trained(NestedPPO, **nested))
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[key], reference[key]) for key in reference), nested
    pulled = base_state(trained(NestedPPO, levels=2, kappa=1.0))
    assert not torch.equal(pulled["value_net.weight"], reference["value_net.weight"])
    assert not torch.equal(pulled["action_net.weight"], reference["action_net.weight"])


@pytest.mark.parametrize("optimizer", ["upgd", "upgd-sgd"])
def test_one_level_gives_exactly_ppo_with_upgd(optimizer):
    # UPGD seeds its noise from the global RNG: a second optimizer built for the outer critics drew again.
    config = small_config(optimizer, engine="sb3")
    plain = PPO("MlpPolicy", make_env(config), **sb3_ppo_kwargs(config))
    plain.learn(384)
    reference = base_state(plain)
    state = base_state(trained(NestedPPO, optimizer=optimizer, engine="sb3", levels=1))
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[key], reference[key]) for key in reference)
    fast = base_state(trained(ContinualPPO, optimizer=optimizer))  # and on the fast engine
    state = base_state(trained(NestedPPO, optimizer=optimizer, levels=1))
    assert all(torch.equal(state[key], fast[key]) for key in fast)


def test_outer_critics_move_more_slowly_than_inner():
    snapshots = Snapshots()
    model = trained(NestedPPO, tools=[snapshots], levels=3, kappa=1.0, lr_ratio=0.1)
    taken = [*snapshots.taken, [critic_vector(model, k) for k in (1, 2, 3)]]
    for before, after in zip(taken, taken[1:], strict=False):
        d1, d2, d3 = ((a - b).norm().item() for a, b in zip(after, before, strict=True))
        assert d1 > d2 > d3 > 0


def test_learning_rate_per_level_survives_sb3_schedule_update():
    model = trained(NestedPPO, steps=128, levels=3, lr_ratio=0.5)
    lrs = [group["lr"] for group in model.policy.optimizer.param_groups]
    assert lrs == pytest.approx([3e-4, 1.5e-4, 0.75e-4], rel=1e-12)


@pytest.mark.parametrize("mode", ["distill", "polyak"])
def test_outer_critics_stop_changing_after_freeze(mode):
    snapshots = Snapshots()  # rollouts end at 128, 256, 384, 512 steps; updates train outer while <= 256
    model = trained(NestedPPO, steps=512, tools=[snapshots], levels=3, mode=mode, freeze_outer_after=256)
    taken = [*snapshots.taken, [critic_vector(model, k) for k in (1, 2, 3)]]
    assert len(taken) == 5
    for level in (1, 2):  # index 1, 2 = V_2, V_3
        assert not torch.equal(taken[0][level], taken[1][level])
        assert not torch.equal(taken[1][level], taken[2][level])
        assert all(torch.equal(taken[2][level], later[level]) for later in taken[3:])
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(taken, taken[1:], strict=False))  # V_1 learns on


def test_polyak_update_moves_each_outer_critic_towards_the_next_inner_one():
    model = trained(NestedPPO, steps=128, levels=3, mode="polyak", tau=0.25)
    v1, v2, v3 = (critic_vector(model, k) for k in (1, 2, 3))
    model.policy.polyak_update(0.25)
    new_v2 = 0.75 * v2 + 0.25 * v1
    torch.testing.assert_close(critic_vector(model, 2), new_v2)
    torch.testing.assert_close(critic_vector(model, 3), 0.75 * v3 + 0.25 * new_v2)
    torch.testing.assert_close(critic_vector(model, 1), v1, rtol=0, atol=0)


def test_inner_loss_includes_the_kappa_term():
    model = trained(NestedPPO, steps=128, levels=2, kappa=0.0)
    batch = next(model.rollout_buffer.get(64))
    losses, grads = {}, {}
    for kappa in (0.0, 2.0):
        model.kappa = kappa
        loss, values, _ = model._loss(batch, 0.2, None, defaultdict(list))
        model.policy.optimizer.zero_grad()
        loss.backward()
        losses[kappa], grads[kappa] = loss.item(), model.policy.value_net.weight.grad.clone()
    with torch.no_grad():
        v1 = model.policy.predict_values(batch.observations).flatten()
        (v2,) = model.policy.outer_values(batch.observations)
    expected = model.vf_coef * 2.0 * nn.functional.mse_loss(v1, v2).item()
    assert expected > 1e-6
    assert losses[2.0] - losses[0.0] == pytest.approx(expected, rel=1e-3)  # float32 arithmetic
    assert not torch.allclose(grads[0.0], grads[2.0])


def test_every_critic_is_an_mlp_and_a_head_for_plasticity_tools():
    critics = trained(NestedPPO, steps=64, levels=3).policy.critics()
    assert len(critics) == 3
    for mlp, head in critics:
        assert isinstance(mlp, nn.Sequential) and isinstance(head, nn.Linear) and head.out_features == 1
        assert isinstance(mlp[0], nn.Linear) and isinstance(mlp[1], nn.ReLU)


def test_save_load_keeps_every_critic_and_the_optimizer_state(tmp_path):
    model = trained(NestedPPO, steps=256, levels=3, kappa=0.5, lr_ratio=0.2, mode="distill")
    model.save(tmp_path / "model.zip")
    loaded = NestedPPO.load(tmp_path / "model.zip")
    assert loaded.policy.levels == 3 and loaded.kappa == 0.5 and loaded.mode == "distill"
    for (key, p), (_, q) in zip(
        model.policy.state_dict().items(), loaded.policy.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), key
    saved, restored = model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert [g["lr_scale"] for g in restored["param_groups"]] == pytest.approx([1.0, 0.2, 0.04])
    assert saved["state"].keys() == restored["state"].keys() and len(saved["state"]) > 0
    for index, moments in saved["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, restored["state"][index][name]), (index, name)


def test_cli_trains_three_levels_and_logs_every_critic(cli, tmp_path):
    code, _, err = cli(
        "train",
        "--agent",
        "nested-ppo",
        "--steps",
        "768",
        "--n-envs",
        "2",
        "--run-dir",
        str(tmp_path),
        "--name",
        "nested",
        "--set",
        "nested.levels=3",
        "--set",
        "nested.kappa=1.0",
        "--set",
        "nested.freeze_outer_after=256",
        *FAST,
    )
    assert code == 0, err
    scalars = read_scalars(tmp_path / "nested")
    for level in (1, 2, 3):
        for name in ("value_mean", "explained_variance", "churn", "loss"):
            assert f"nested/critic_{level}/{name}" in scalars
    assert {"nested/critic_1/gap", "nested/critic_2/gap"} <= set(scalars)
    assert "nested/critic_3/gap" not in scalars
    churn = {level: [value for _, value in scalars[f"nested/critic_{level}/churn"]] for level in (1, 2, 3)}
    # Updates at 256 (the outer critics learn) and 512 (frozen) are logged; SB3 never dumps the last one.
    assert len(churn[1]) == 2 and all(value > 0 for value in churn[1])
    for level in (2, 3):
        assert churn[level][0] > 0 and churn[level][1] == 0.0
    loaded = NestedPPO.load(tmp_path / "nested" / "model.zip")
    assert loaded.policy.levels == 3


BAD_NESTED = [
    ("nested.levels=0", "nested.levels must be an integer >= 1 (1 = plain PPO), got 0"),
    ("nested.kappa=-0.5", "nested.kappa must be >= 0, got -0.5"),
    ("nested.lr_ratio=0", "nested.lr_ratio must be in (0, 1], got 0.0"),
    ("nested.lr_ratio=1.5", "nested.lr_ratio must be in (0, 1], got 1.5"),
    ("nested.tau=0", "nested.tau must be in (0, 1], got 0.0"),
    ("nested.tau=1.01", "nested.tau must be in (0, 1], got 1.01"),
    ("nested.mode=polyack", "unknown nested.mode 'polyack'; valid choices: polyak, distill"),
    ("nested.freeze_outer_after=-1", "nested.freeze_outer_after must be >= 0 environment steps"),
    ("nested.freeze_outer_after=257", "nested.freeze_outer_after must be within the run (0 … steps = 256)"),
    ("nested.critic=[0]", "nested.critic widths must be positive integers, got [0]"),
    ("nested.levels=many", "config key 'nested.levels' expects int"),
]


@pytest.mark.parametrize("assignment, message", BAD_NESTED, ids=[a for a, _ in BAD_NESTED])
def test_bad_nested_input_is_one_clear_line_nothing_written(cli, tmp_path, assignment, message):
    runs = tmp_path / "runs"
    code, _, err = cli(
        "train", "--agent", "nested-ppo", "--steps", "256", "--run-dir", str(runs), *FAST, "--set", assignment
    )
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not runs.exists() or not any(runs.iterdir())


def test_polyak_with_differently_shaped_outer_critic_is_rejected(cli, tmp_path):
    runs = tmp_path / "runs"
    args = ("train", "--agent", "nested-ppo", "--steps", "256", "--run-dir", str(runs), *FAST)
    code, _, err = cli(*args, "--set", "nested.mode=polyak", "--set", "nested.critic=[32]")
    assert code == 2 and "nested.mode='polyak' needs every outer critic shaped like the inner one" in err
    assert not runs.exists() or not any(runs.iterdir())
    code, _, err = cli(*args, "--set", "nested.mode=polyak", "--set", "nested.critic=[64, 64]")
    assert code == 0, err


def test_outer_critic_width_is_configurable():
    config = small_config(levels=2, critic=[16])
    config.agent = "nested-ppo"
    model = build_agent(config, make_env(config))
    mlp, _ = model.policy.critics()[1]
    assert [layer.out_features for layer in mlp if isinstance(layer, nn.Linear)] == [16]
    assert policy_kwargs(config)["net_arch"]["vf"] == [64, 64]


def test_same_seed_same_nested_run():
    first, second = (trained(NestedPPO, steps=256, levels=3, kappa=1.0) for _ in range(2))
    for (key, p), q in zip(
        first.policy.state_dict().items(), second.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), key


@pytest.mark.parametrize(
    "nested",
    [
        {"levels": 3, "kappa": 0.5},  # every critic trained (distillation)
        {"levels": 2, "kappa": 0.5, "mode": "polyak"},  # the outer critic moved by Polyak steps only
        {"levels": 2, "kappa": 0.5, "freeze_outer_after": 0},  # the outer critic frozen
    ],
)
def test_nested_gradient_by_hand_equals_autograd(nested):
    model = trained(NestedPPO, **nested)  # 3 updates: the critics apart, some ratios clipped
    trains_outer = nested.get("mode", "distill") == "distill" and "freeze_outer_after" not in nested
    outer = [name for name, _ in model.policy.named_parameters() if name.startswith("outer_")]
    assert_gradient_by_hand_equals_autograd(model, untrained=() if trains_outer else outer)
