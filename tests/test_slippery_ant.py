"""SlipperyAnt as Dohare et al.'s RL code runs it (Nature 2024): each setting of their recipe, both engines
under it, the change rule of their friction, the Ant-v3 settings of the env, and the shipped experiment."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from nested_ac import envs
from nested_ac.agents import ContinualPPO, NestedPPO
from nested_ac.agents.ppo import clip_grad_norm, normalize_advantages
from nested_ac.build import build_agent, build_tools, optimizer_spec, sb3_ppo_kwargs
from nested_ac.callbacks import TaskClock
from nested_ac.config import RunConfig, resolve_config
from nested_ac.envs.mujoco import slippery_ant
from nested_ac.errors import ConfigError
from nested_ac.networks import policy_networks
from nested_ac.optim import ElementwiseAdam, FlatAdam, with_element_steps
from nested_ac.plasticity import ContinualBackprop, initialisation, reset_units
from nested_ac.presets import load_preset
from nested_ac.sweep import load_experiment
from nested_ac.train import train
from tests.test_plasticity import make_model, observations, training_step
from tests.test_ppo import assert_gradient_by_hand_equals_autograd

NETS = {"net_arch": {"pi": [32, 32], "vf": [32, 32]}, "activation_fn": torch.nn.ReLU}
SMALL = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "seed": 0}
# The recipe's PPO settings that differ from SB3's defaults.
RECIPE = {"vf_coef": 1.0, "max_grad_norm": None, "normalize_advantage_over": "batch"}


def pendulum_model(engine: str = "fast", init: str = "orthogonal", optimizer_kwargs=None, **kwargs):
    env = make_vec_env("Pendulum-v1", n_envs=4, seed=0)
    policy_kwargs = {**NETS, "optimizer_kwargs": {"eps": 1e-8, **(optimizer_kwargs or {})}}
    if init != "orthogonal":  # SB3's, the default
        policy_kwargs["init"] = init
    return ContinualPPO("MlpPolicy", env, engine=engine, policy_kwargs=policy_kwargs, **{**SMALL, **kwargs})


def one_update(engine: str, collector: ContinualPPO | None = None, **kwargs) -> ContinualPPO:
    """A model after one update on ``collector``'s rollout buffer (one rollout of the exact engine, with
    ``kwargs`` unless given) with the same minibatch order."""
    if collector is None:
        collector = pendulum_model("sb3", **kwargs)
        collector.learn(1)
    model = pendulum_model(engine, **kwargs)
    model.rollout_buffer.__dict__.update(
        {key: np.copy(value) if isinstance(value, np.ndarray) else value
         for key, value in collector.rollout_buffer.__dict__.items()}
    )  # fmt: skip
    model.set_logger(Logger(None, []))
    np.random.seed(1)
    model.train()
    return model


def assert_close_parameters(a: ContinualPPO, b: ContinualPPO, rtol: float = 1e-5) -> None:
    for (name, p), q in zip(a.policy.named_parameters(), b.policy.parameters(), strict=True):
        assert torch.linalg.vector_norm(p - q) <= rtol * torch.linalg.vector_norm(q), name


# --- the networks: LeCun-uniform initialisation -------------------------------------------------------


def test_lecun_uniform_initialises_every_layer_heads_included_with_zero_biases_and_log_std():
    policy = pendulum_model(init="lecun_uniform").policy
    layers = [m for m in policy.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 6  # two hidden layers and a head, for the actor and for the critic
    for layer in layers:
        bound = math.sqrt(3 / layer.in_features)
        assert layer.weight.abs().max() <= bound and torch.all(layer.bias == 0)
        # U(-b, b) has standard deviation b/√3 (SB3's orthogonal heads: gain 0.01 and 1, not this)
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.25)
    assert torch.all(policy.log_std == 0)
    orthogonal = pendulum_model().policy
    assert orthogonal.action_net.weight.abs().max() < 0.05  # SB3's action head (gain 0.01): the default
    nested = NestedPPO(
        "MlpPolicy",
        make_vec_env("Pendulum-v1", n_envs=1),
        levels=2,
        policy_kwargs={**NETS, "init": "lecun_uniform"},
    ).policy
    for mlp, head in nested.critics()[1:]:  # the outer critics are initialised as PPO's
        for layer in [*mlp, head]:
            if isinstance(layer, torch.nn.Linear):
                assert layer.weight.abs().max() <= math.sqrt(3 / layer.in_features) and torch.all(
                    layer.bias == 0
                )
                assert layer.weight.std().item() == pytest.approx(1 / math.sqrt(layer.in_features), rel=0.25)


def test_an_unknown_initialisation_is_a_config_error():
    config = resolve_config(overrides={"network.init": "xavier", "env.id": "CartPole-v1"})
    with pytest.raises(ConfigError, match="unknown network.init 'xavier'; valid choices: .*lecun_uniform"):
        build_agent(config, make_vec_env("CartPole-v1", n_envs=1))


def test_continual_backprop_redraws_replaced_units_lecun_uniform():
    policy = pendulum_model(init="lecun_uniform").policy
    assert initialisation(policy) == "lecun_uniform"
    assert initialisation(pendulum_model().policy) == "orthogonal"
    actor = policy_networks(policy)[0]
    layer = actor.hidden[1]  # 32 inputs: bound √(3/32)
    units = torch.arange(32)
    with torch.no_grad():
        layer.weight.fill_(5.0)
    reset_units(actor, 1, units, policy.optimizer, "lecun_uniform")
    bound = math.sqrt(3 / 32)
    assert layer.weight.abs().max() <= bound
    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


# --- PPO: whole-batch advantages, value-loss weight 1, no clipping; both engines agree -----------------


def test_advantages_normalised_over_the_whole_batch_once():
    collector = pendulum_model("sb3")
    collector.learn(1)
    advantages = collector.rollout_buffer.advantages.astype(np.float64)
    expected = (advantages - advantages.mean()) / advantages.std(ddof=1)
    batch = one_update("sb3", collector, normalize_advantage_over="batch")
    np.testing.assert_allclose(batch.rollout_buffer.advantages, expected, rtol=1e-5, atol=1e-6)
    # the same update as PPO on advantages normalised beforehand, not per minibatch
    collector.rollout_buffer.advantages = expected.astype(np.float32)
    prenormalised = one_update("sb3", collector, normalize_advantage=False)
    assert_close_parameters(batch, prenormalised, rtol=1e-6)
    collector.rollout_buffer.advantages = advantages.astype(np.float32)
    per_minibatch = one_update("sb3", collector)
    pairs = zip(batch.policy.parameters(), per_minibatch.policy.parameters(), strict=True)
    assert any(not torch.allclose(p, q) for p, q in pairs)
    buffer = collector.rollout_buffer
    buffer.advantages[:] = 3.0  # no spread: centred only
    normalize_advantages(buffer)
    assert np.all(buffer.advantages == 0)


def test_max_grad_norm_none_leaves_the_gradient_unclipped():
    weight = torch.nn.Parameter(torch.zeros(3))
    weight.grad = torch.tensor([3.0, 4.0, 0.0])
    assert clip_grad_norm([weight], None) == 5.0 and torch.equal(weight.grad, torch.tensor([3.0, 4.0, 0.0]))
    for engine in ("fast", "sb3"):
        unclipped = one_update(engine, max_grad_norm=None)
        never_clips = one_update(engine, max_grad_norm=1e30)
        clipped = one_update(engine)  # SB3's 0.5: Pendulum's untrained critic has a far larger gradient
        for p, q in zip(unclipped.policy.parameters(), never_clips.policy.parameters(), strict=True):
            assert torch.equal(p, q)
        pairs = zip(unclipped.policy.parameters(), clipped.policy.parameters(), strict=True)
        assert any(not torch.allclose(p, r) for p, r in pairs)
    with pytest.raises(ConfigError, match="ppo.max_grad_norm must be > 0 \\(null: no clipping\\)"):
        resolve_config(overrides={"ppo.max_grad_norm": 0})
    assert resolve_config(assignments=["ppo.max_grad_norm=null"]).ppo.max_grad_norm is None


@pytest.mark.parametrize("optimizer", ["adam", "adam+l2"])
def test_the_fast_engine_equals_the_exact_one_under_the_recipe(optimizer):
    kwargs = {**RECIPE, "init": "lecun_uniform"}
    if optimizer == "adam+l2":
        kwargs["optimizer_kwargs"] = {"betas": (0.99, 0.99), "weight_decay": 1e-3}  # torch Adam's: coupled
    fast, exact = one_update("fast", **kwargs), one_update("sb3", **kwargs)
    assert fast._hand is not None and exact._hand is None  # written by hand; autograd
    assert type(fast.policy.optimizer) is FlatAdam and type(exact.policy.optimizer) is torch.optim.Adam
    start = pendulum_model("sb3", **kwargs).policy.state_dict()
    for name, value in exact.policy.state_dict().items():
        assert not torch.equal(value, start[name]), name
    assert_close_parameters(fast, exact)
    model = pendulum_model("fast", **kwargs)
    model.learn(512)
    model.set_logger(Logger(None, []))
    assert_gradient_by_hand_equals_autograd(model)


def test_the_value_loss_weight_scales_the_critics_gradient():
    model = pendulum_model("sb3")
    model.learn(1)
    batch = next(iter(next(model._minibatches())))
    grads = []
    for vf_coef in (0.5, 1.0):
        model.vf_coef = vf_coef
        model.policy.optimizer.zero_grad()
        loss, _, _ = model._loss(batch, 0.2, None, defaultdict(list))
        loss.backward()
        grads.append(model.policy.value_net.weight.grad.clone())
    torch.testing.assert_close(grads[1], 2 * grads[0])


# --- the optimizer: coupled L2 on every parameter -------------------------------------------------------


def test_coupled_l2_is_torch_adams_weight_decay_on_every_parameter():
    config = RunConfig()
    config.optimizer.l2, config.optimizer.betas = 1e-3, [0.99, 0.99]
    assert optimizer_spec(config) == (
        torch.optim.Adam,
        {"betas": (0.99, 0.99), "eps": 1e-5, "weight_decay": 1e-3},
    )
    config.optimizer.l2, config.optimizer.weight_decay = 0.0, 1e-3  # decoupled: AdamW, as before
    assert optimizer_spec(config)[0] is torch.optim.AdamW
    config.optimizer.l2 = 1e-3
    with pytest.raises(ConfigError, match="two forms of weight decay; set one of them"):
        optimizer_spec(config)
    config.optimizer.name, config.optimizer.weight_decay = "upgd", 0.0
    with pytest.raises(ConfigError, match="optimizer.l2 \\(coupled L2\\) is Adam's"):
        optimizer_spec(config)
    with pytest.raises(ConfigError, match="optimizer.l2 must be >= 0"):
        resolve_config(overrides={"optimizer.l2": -1.0})
    # With a zero loss gradient, Adam's first step on g = λ·w moves every parameter by lr·sign(w): the
    # biases and the log-std (set away from 0) too.
    overrides = {"optimizer.l2": 1e-3, "optimizer.eps": 1e-12, "env.id": "Pendulum-v1", "ppo.engine": "sb3"}
    config = resolve_config(overrides=overrides)
    policy = build_agent(config, make_vec_env("Pendulum-v1", n_envs=1)).policy
    (group,) = policy.optimizer.param_groups
    assert group["weight_decay"] == 1e-3 and len(group["params"]) == len(list(policy.parameters()))
    with torch.no_grad():
        policy.log_std.fill_(0.5)
        for parameter in policy.parameters():
            parameter.add_(0.1 * torch.sign(parameter) + 0.1 * (parameter == 0))  # no weight at 0
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    for parameter in policy.parameters():
        parameter.grad = torch.zeros_like(parameter)
    policy.optimizer.step()
    lr = config.ppo.learning_rate
    for name, parameter in policy.named_parameters():
        step = parameter.detach() - before[name]
        torch.testing.assert_close(step, -lr * torch.sign(before[name]), rtol=1e-3, atol=0, msg=name)


def test_elementwise_adam_takes_coupled_l2_as_torch_adam_does():
    assert with_element_steps((torch.optim.Adam, {"eps": 1e-8, "weight_decay": 1e-3})) == (
        ElementwiseAdam,
        {"eps": 1e-8, "l2": 1e-3},
    )
    assert with_element_steps((torch.optim.AdamW, {"weight_decay": 1e-3})) == (
        ElementwiseAdam,
        {"weight_decay": 1e-3},
    )
    torch.manual_seed(0)
    weights = [torch.randn(5, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_() for w in weights]
    ours = ElementwiseAdam(weights, lr=1e-2, betas=(0.99, 0.99), l2=1e-1)
    theirs = torch.optim.Adam(copies, lr=1e-2, betas=(0.99, 0.99), weight_decay=1e-1, foreach=False)
    for _ in range(20):
        gradients = [torch.randn_like(w) for w in weights]
        for group, optimizer in ((weights, ours), (copies, theirs)):
            for w, g in zip(group, gradients, strict=True):
                w.grad = g.clone()
            optimizer.step()
    for w, c in zip(weights, copies, strict=True):
        torch.testing.assert_close(w, c, rtol=1e-5, atol=1e-6)


# --- continual backprop: stochastic rounding, no optimizer reset, no move to the bias -------------------


def mature_layer(cbp: ContinualBackprop, units: int) -> tuple[str, int]:
    key = ("actor", 0)
    cbp.ages[key] = np.full(units, 10**6, dtype=np.int64)
    cbp.utility[key] = torch.arange(units, dtype=torch.float32)
    cbp.carry[key] = 0.0
    return key


@pytest.mark.parametrize("expected", [0.0256, 2.5])
def test_stochastic_rounding_replaces_floor_n_plus_one_with_probability_its_fraction(expected):
    units = 256
    cbp = ContinualBackprop(replacement_rate=expected / units, maturity=0, rounding="stochastic")
    key = mature_layer(cbp, units)
    np.random.seed(0)
    counts = []
    for _ in range(4000):
        due = cbp._due(key)
        counts.append(0 if due is None else len(due))
        if due is not None:  # the lowest utilities
            assert torch.equal(torch.sort(due).values, torch.arange(len(due)))
    assert set(counts) == {math.floor(expected), math.floor(expected) + 1}
    spread = math.sqrt((expected % 1) * (1 - expected % 1) / len(counts))
    assert abs(np.mean(counts) - expected) < 4 * spread
    assert cbp.carry[key] == 0.0  # nothing carried
    carry = ContinualBackprop(replacement_rate=expected / units, maturity=0)
    key = mature_layer(carry, units)
    carried = [len(d) if (d := carry._due(key)) is not None else 0 for _ in range(100)]
    assert carried != counts[:100] and sum(carried) == math.floor(100 * expected + 1e-9)
    with pytest.raises(ValueError, match="cbp.rounding must be one of carry, stochastic"):
        ContinualBackprop(rounding="nearest")


def test_without_optimizer_reset_replaced_units_keep_their_adam_state_and_torch_adam():
    config = RunConfig()
    config.cbp.enabled, config.cbp.reset_optimizer_state = True, False
    for engine, optimizer_class in (("fast", FlatAdam), ("sb3", torch.optim.Adam)):
        config.ppo.engine = engine
        model = build_agent(config, make_vec_env("CartPole-v1", n_envs=1))
        assert type(model.policy.optimizer) is optimizer_class  # one step count per tensor: nothing reset
    cbp = ContinualBackprop(replacement_rate=1 / 16, maturity=2, reset_optimizer_state=False)
    model = make_model(tools=[cbp])
    assert type(model.policy.optimizer) is FlatAdam  # the fast engine's torch Adam, not ElementwiseAdam
    cbp.bind(model)
    obs = observations()
    for _ in range(2):  # the units mature (age > 2) at the third step
        training_step(model, obs)
    actor = policy_networks(model.policy)[0]
    state = model.policy.optimizer.state[actor.hidden[0].weight]
    model.tools = []
    training_step(model, obs)  # the forward the tool reads, and the optimizer's own step
    moments = {key: state[key].clone() for key in ("exp_avg", "exp_avg_sq")}
    cbp.after_optimizer_step(model, model.policy.optimizer)
    replaced = int(np.flatnonzero(cbp.ages[("actor", 0)] == 0)[0])
    for key, value in moments.items():
        assert torch.equal(state[key], value) and torch.all(value[replaced] != 0)
    reset = ContinualBackprop(replacement_rate=1 / 16, maturity=2)  # the default: AdamGnT's reset
    assert reset.restarts_entry_state and not cbp.restarts_entry_state


def test_without_moving_the_mean_the_next_bias_is_left_alone():
    for move in (True, False):
        cbp = ContinualBackprop(replacement_rate=1 / 16, maturity=2, decay_rate=0.9, move_mean_to_bias=move)
        model = make_model(activation=torch.nn.Tanh, tools=[cbp])
        cbp.bind(model)
        obs = observations()
        for _ in range(2):
            training_step(model, obs)
        model.tools = []
        training_step(model, obs)
        actor = policy_networks(model.policy)[0]
        bias = actor.output.bias.detach().clone()  # the head: it receives layer 1's units' means
        cbp.after_optimizer_step(model, model.policy.optimizer)
        assert cbp.replaced[("actor", 1)] == 1
        if move:
            assert not torch.equal(actor.output.bias, bias)
        else:
            assert torch.equal(actor.output.bias, bias)


def test_the_cbp_paper_preset_is_the_authors_rl_recipe():
    config = resolve_config(preset=load_preset("cbp-paper"))
    assert (config.env.n_envs, config.ppo.n_steps, config.ppo.batch_size, config.ppo.n_epochs) == (
        1,
        2048,
        128,
        10,
    )
    assert (config.ppo.learning_rate, config.ppo.vf_coef, config.ppo.ent_coef) == (1e-4, 1.0, 0.0)
    assert config.ppo.max_grad_norm is None and config.ppo.normalize_advantage_over == "batch"
    assert (config.network.actor, config.network.critic, config.network.init) == (
        [256, 256],
        [256, 256],
        "lecun_uniform",
    )
    assert (config.optimizer.betas, config.optimizer.eps, config.optimizer.l2) == ([0.99, 0.99], 1e-8, 1e-4)
    assert config.optimizer.weight_decay == 0.0
    cbp = config.cbp
    assert cbp.enabled and (cbp.replacement_rate, cbp.maturity, cbp.decay_rate) == (1e-4, 10_000, 0.99)
    assert cbp.rounding == "stochastic" and not cbp.reset_optimizer_state and not cbp.move_mean_to_bias
    (tool,) = [tool for tool in build_tools(config) if isinstance(tool, ContinualBackprop)]
    assert tool.rounding == "stochastic" and not tool.restarts_entry_state and not tool.move_mean_to_bias


# --- the world: the change rule and Ant-v3's settings ---------------------------------------------------


class FixedEpisodes(gym.Env):
    """Episodes of exactly ``length`` steps; remembers the task of every step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 7) -> None:
        self.length, self.t, self.task, self.tasks = length, 0, 0, []

    def set_task(self, task: int) -> None:
        self.task = task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        self.tasks.append(self.task)
        return np.zeros(2, dtype=np.float32), 0.0, False, self.t == self.length, {}


def clocked_run(clock: TaskClock, steps: int = 96, length: int = 7) -> tuple[FixedEpisodes, TaskClock]:
    env = FixedEpisodes(length)
    model = ContinualPPO(
        "MlpPolicy", make_vec_env(lambda: env, n_envs=1), n_steps=16, batch_size=16, n_epochs=1
    )
    model.learn(steps, callback=clock)
    return env, clock


def test_a_change_comes_at_the_first_episode_end_more_than_every_steps_after_the_previous_change():
    # Episodes of 7 steps end at steps s = 6, 13, 20, 27 … (numbered from 0). From s = 0: the first end
    # with s − 0 > 20 is s = 27, then s − 27 > 20 gives 48, then 69, then 90.
    env, clock = clocked_run(
        TaskClock(envs.EveryNSteps(20), at_episode_boundary=True, since_last_switch=True)
    )
    assert clock.switches == [(0, 0), (28, 1), (49, 2), (70, 3), (91, 4)]
    assert [env.tasks.index(task) for task in range(1, 5)] == [28, 49, 70, 91]  # the first step of each
    # the episode-boundary rule on the absolute grid (20, 40, 60, 80): each change waits for the next end
    env, clock = clocked_run(TaskClock(envs.EveryNSteps(20), at_episode_boundary=True))
    assert [env.tasks.index(task) for task in range(1, 5)] == [21, 42, 63, 84]
    # periodic schedules give phase k the task of step k·every
    env, clock = clocked_run(
        TaskClock(envs.Cyclic(20, (3, 5)), at_episode_boundary=True, since_last_switch=True)
    )
    assert clock.switches == [(0, 3), (28, 5), (49, 3), (70, 5), (91, 3)]


def test_the_change_rule_resumes_from_its_saved_phase():
    clock = TaskClock(envs.EveryNSteps(20), at_episode_boundary=True, since_last_switch=True)
    clocked_run(clock, steps=64)
    resumed = TaskClock(envs.EveryNSteps(20), at_episode_boundary=True, since_last_switch=True)
    resumed.load_state_dict(clock.state_dict())
    assert (resumed.phase, resumed.last_switch, resumed.task) == (2, 48, 2)
    env = FixedEpisodes()
    model = ContinualPPO(
        "MlpPolicy", make_vec_env(lambda: env, n_envs=1), n_steps=16, batch_size=16, n_epochs=1
    )
    model.num_timesteps = 64  # as restored; this env's episodes end at s = 64 + 6, 64 + 13 …
    model.learn(48, callback=resumed, reset_num_timesteps=False)
    # no switch at the start (the run is on its task); s = 70 is the first end with s − 48 > 20, then 91
    assert resumed.switches == [*clock.switches, (71, 3), (92, 4)]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"env.schedule.since_last_switch": True}, "needs env.schedule.at_episode_boundary=true"),
        (
            {"env.schedule.since_last_switch": True, "env.schedule.at_episode_boundary": True,
             "env.schedule.kind": "explicit", "env.schedule.switches": [[10, 1]]},
            "and a periodic kind",
        ),
    ],
)  # fmt: skip
def test_the_change_rule_needs_episode_boundaries_and_a_period(schedule, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(overrides=schedule)


def test_zero_contact_forces_gives_the_observation_and_reward_of_ant_v3_as_the_authors_ran_it():
    v5 = gym.make("nested_ac/SlipperyAnt-v0", task_seed=0)
    v3 = gym.make("nested_ac/SlipperyAnt-v0", task_seed=0, zero_contact_forces=True)
    assert v5.observation_space.shape == (105,) and v3.observation_space.shape == (111,)
    v3.reset(seed=0)
    for _ in range(30):
        observation, reward, _, _, info = v3.step(v3.action_space.sample())
        assert not observation[27:].any() and info["reward_contact"] == 0
        assert reward == pytest.approx(info["reward_forward"] + info["reward_survive"] + info["reward_ctrl"])
    v5.reset(seed=0)
    contact = [v5.step(v5.action_space.sample())[4]["reward_contact"] for _ in range(30)]
    assert min(contact) < 0  # v5 charges the contact forces
    with pytest.raises(ConfigError, match="zero_contact_forces sets contact_cost_weight itself"):
        gym.make("nested_ac/SlipperyAnt-v0", zero_contact_forces=True, contact_cost_weight=1.0)


def test_unclipped_actions_reach_the_ant_which_clamps_its_motors_and_charges_the_sample():
    ant = gym.make("nested_ac/SlipperyAnt-v0", task_seed=0, unclipped_actions=True)
    assert np.all(ant.action_space.high > 1e38) and np.all(ant.action_space.low < -1e38)
    positions, costs = [], []
    for value in (1.0, 5.0):
        ant.reset(seed=0)
        _, _, _, _, info = ant.step(np.full(8, value, dtype=np.float32))
        positions.append(ant.unwrapped.data.qpos.copy())
        costs.append(info["reward_ctrl"])
    np.testing.assert_array_equal(positions[0], positions[1])  # the motors saw 1 both times
    assert costs == [pytest.approx(-0.5 * 8 * 1.0), pytest.approx(-0.5 * 8 * 25.0)]
    clipped = gym.make("nested_ac/SlipperyAnt-v0", task_seed=0)
    assert np.all(clipped.action_space.high == 1.0)


def test_the_time_limit_can_end_an_episode_as_a_termination():
    for terminates in (False, True):  # Ant-v5's own time limit, shortened to 5 steps
        ant = slippery_ant(task_seed=0, max_episode_steps=5, time_limit_terminates=terminates)
        ant.reset(seed=0)
        ends = [ant.step(np.zeros(8, dtype=np.float32))[2:4] for _ in range(5)]
        assert ends[:4] == [(False, False)] * 4
        assert ends[4] == ((True, False) if terminates else (False, True))


# --- the shipped experiment ----------------------------------------------------------------------------


def test_the_slippery_ant_experiment_runs_the_recipe_in_its_four_arms_and_upgd(tmp_path):
    experiment = load_experiment("slippery-ant", tmp_path)
    configs = {run.variant: run.config for run in experiment.runs if run.seed == 0}
    assert list(configs) == ["ppo-adam", "ppo-proper-adam", "ppo-l2", "ppo-cbp", "ppo-upgd"]
    for name, config in configs.items():
        assert config.steps == 20_000_000 and config.env.n_envs == 1, name
        assert config.env.kwargs == {
            "zero_contact_forces": True,
            "unclipped_actions": True,
            "time_limit_terminates": True,
        }
        schedule = config.env.schedule
        assert (schedule.every, schedule.at_episode_boundary, schedule.since_last_switch) == (
            2_000_000,
            True,
            True,
        )
        ppo = config.ppo
        assert (ppo.n_steps, ppo.batch_size, ppo.n_epochs, ppo.gamma, ppo.gae_lambda, ppo.clip_range) == (
            2048, 128, 10, 0.99, 0.95, 0.2
        )  # fmt: skip
        assert (ppo.vf_coef, ppo.ent_coef, ppo.max_grad_norm, ppo.normalize_advantage_over) == (
            1.0,
            0.0,
            None,
            "batch",
        )
        assert config.network.init == "lecun_uniform" and config.network.actor == [256, 256]
    adam = {name: (c.optimizer.name, c.optimizer.betas, c.optimizer.eps, c.optimizer.l2, c.cbp.enabled)
            for name, c in configs.items()}  # fmt: skip
    assert adam == {
        "ppo-adam": ("adam", [0.9, 0.999], 1e-8, 0.0, False),
        "ppo-proper-adam": ("adam", [0.99, 0.99], 1e-8, 0.0, False),
        "ppo-l2": ("adam", [0.99, 0.99], 1e-8, 1e-3, False),
        "ppo-cbp": ("adam", [0.99, 0.99], 1e-8, 1e-4, True),
        "ppo-upgd": ("upgd", [0.9, 0.999], 1e-5, 0.0, False),
    }
    assert configs["ppo-cbp"].cbp == resolve_config(preset=load_preset("cbp-paper")).cbp
    assert configs["ppo-upgd"].ppo.learning_rate == 2e-4


@pytest.mark.filterwarnings("ignore:no episode ended in task")  # the last task is a few steps long
@pytest.mark.parametrize("arm", ["ppo-adam", "ppo-proper-adam", "ppo-l2", "ppo-cbp", "ppo-upgd"])
def test_slippery_ant_smoke_each_arm_through_a_friction_change(arm, tmp_path):
    """Each arm of the shipped experiment, on tiny steps: short episodes (50 steps) and a change at the first
    episode end more than 60 steps after the previous one, so every run goes through a friction change."""
    (spec,) = [
        run for run in load_experiment("slippery-ant", tmp_path).runs if run.variant == arm and not run.seed
    ]
    config = spec.config
    config.steps, config.progress_bar, config.run_dir = 192, False, str(tmp_path / "runs")
    config.ppo.n_steps, config.ppo.batch_size, config.ppo.n_epochs = 64, 32, 1
    config.network.actor = config.network.critic = [32, 32]
    config.env.kwargs["max_episode_steps"] = 50
    config.env.schedule.every, config.checkpoint.every = 60, 0
    config.cbp.maturity, config.cbp.replacement_rate = 4, 0.05
    result = train(config)
    assert result.steps == 192 and len(result.switches) >= 2 and result.switches[1][0] > 61
    assert Path(result.run_dir, "model.zip").exists()


def test_plain_sb3_ppo_takes_the_default_settings_but_not_the_recipe():
    kwargs = sb3_ppo_kwargs(RunConfig())
    assert "engine" not in kwargs and "normalize_advantage_over" not in kwargs
    assert "init" not in kwargs["policy_kwargs"]
    PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1), **kwargs)
    with pytest.raises(ConfigError, match="Stable-Baselines3's PPO normalises advantages per minibatch"):
        sb3_ppo_kwargs(resolve_config(preset=load_preset("cbp-paper")))
