"""The numpy-vectorized classic-control tasks step exactly as Gymnasium's own environments do."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from nested_ac.envs import NONSTATIONARY_ENVS, GymnasiumVecEnv, native_vector
from nested_ac.envs.numpy_classic import (
    AcrobotVectorEnv,
    ContinuousMountainCarVectorEnv,
    MountainCarVectorEnv,
    PendulumVectorEnv,
)

TASKS = {
    "Acrobot-v1": AcrobotVectorEnv,
    "Pendulum-v1": PendulumVectorEnv,
    "MountainCar-v0": MountainCarVectorEnv,
    "MountainCarContinuous-v0": ContinuousMountainCarVectorEnv,
}


def fixed_policy(env_id: str, observation: np.ndarray, step: int):
    """A deterministic policy of the observation and the step that reaches every kind of state: it pumps
    energy (pushes with the velocity) most of the time and acts at random-looking times otherwise."""
    phase = (step * 7919) % 13
    if env_id == "Acrobot-v1":
        return int(np.sign(observation[5]) + 1) if phase else step % 3
    if env_id == "MountainCar-v0":
        return int(np.sign(observation[1]) + 1) if phase > 2 else 1
    if env_id == "MountainCarContinuous-v0":
        push = 1.3 * np.sign(observation[1]) if phase else -0.4  # |a| > 1: the env clips the force
        return np.array([push], dtype=np.float32)
    return np.array([2.5 * np.sign(observation[2]) if phase else 0.3], dtype=np.float32)  # Pendulum


def gymnasium_transitions(env_id: str, steps: int):
    """(state before, action, observation, reward, terminated) of ``steps`` steps of Gymnasium's env under
    the fixed policy, reset at each episode end (its own time limit included)."""
    env = gym.make(env_id)
    observation, _ = env.reset(seed=0)
    records = []
    for step in range(steps):
        state = np.array(env.unwrapped.state, dtype=np.float64)
        action = fixed_policy(env_id, observation, step)
        observation, reward, terminated, truncated, _ = env.step(action)
        records.append((state, action, observation, float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            observation, _ = env.reset()
    return records


@pytest.mark.parametrize("env_id", list(TASKS))
def test_one_step_from_every_visited_state_matches_gymnasium(env_id):
    # 600 of Gymnasium's own transitions, stepped at once as 600 copies of the vector env from the same
    # states with the same actions: the same next observation, reward and episode end for each.
    records = gymnasium_transitions(env_id, 600)
    assert any(terminated for *_, terminated, _ in records) or env_id == "Pendulum-v1"
    vector = TASKS[env_id](num_envs=len(records))
    vector.reset(seed=1)
    vector.state = np.stack([state for state, *_ in records])
    actions = np.stack([np.asarray(action) for _, action, *_ in records])
    observations, rewards, terminated, truncated, info = vector.step(actions)
    expected_terminated = np.array([t for *_, t, _ in records])
    np.testing.assert_array_equal(terminated, expected_terminated)
    assert not truncated.any()  # each copy's episode step count is 1 here
    final = observations.copy()
    for i in np.flatnonzero(terminated):  # a finished copy restarted: its last observation is kept aside
        final[i] = info["final_obs"][i]
    np.testing.assert_allclose(final, np.stack([obs for _, _, obs, *_ in records]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rewards, [reward for *_, reward, _, _ in records], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("env_id", ["MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1"])
def test_whole_episodes_under_a_fixed_policy_match_gymnasium(env_id):
    # Non-chaotic tasks: from the same start, an episode's returns, length and end agree step for step.
    env = gym.make(env_id)
    observation, _ = env.reset(seed=3)
    vector = TASKS[env_id](num_envs=1)
    vector.reset(seed=0)
    vector.state = np.array(env.unwrapped.state, dtype=np.float64)[None]
    ours, ours_return, theirs_return = observation[None], 0.0, 0.0
    for step in range(2000):
        action = fixed_policy(env_id, observation, step)
        observation, reward, terminated, truncated, _ = env.step(action)
        ours, our_reward, our_terminated, our_truncated, info = vector.step(np.asarray(action)[None])
        theirs_return, ours_return = theirs_return + reward, ours_return + float(our_reward[0])
        assert (bool(our_terminated[0]), bool(our_truncated[0])) == (terminated, truncated), step
        if terminated or truncated:
            np.testing.assert_allclose(info["final_obs"][0], observation, rtol=1e-5, atol=1e-6)
            break
        np.testing.assert_allclose(ours[0], observation, rtol=1e-5, atol=1e-6)
    assert ours_return == pytest.approx(theirs_return, rel=1e-5)
    if env_id == "Pendulum-v1":  # no terminal state: the time limit ends it
        assert truncated and step + 1 == 200
    else:  # the pumping policy reaches the goal
        assert terminated and step + 1 < vector.max_episode_steps


@pytest.mark.parametrize("env_id", list(TASKS))
def test_copies_restart_within_the_step_and_episodes_keep_their_time_limit(env_id):
    vector = TASKS[env_id](num_envs=8)
    observations, _ = vector.reset(seed=0)
    assert vector.observation_space.contains(observations)
    lengths, running = [], np.zeros(8, dtype=int)
    for _ in range(vector.max_episode_steps * 2 + 5):
        observations, _, terminated, truncated, info = vector.step(vector.action_space.sample())
        running += 1
        done = terminated | truncated
        assert (vector.steps[done] == 0).all() and (vector.steps[~done] == running[~done]).all()
        lengths += list(running[done])
        running[done] = 0
        assert np.isfinite(observations).all()
    assert lengths and max(lengths) <= vector.max_episode_steps


def test_classic_worlds_are_registered_with_their_vector_forms_and_floors():
    ids = [
        f"nested_ac/{kind}{task}-v0"
        for task in ("CartPole", "Acrobot", "Pendulum", "MountainCar")
        for kind in ("Permuted", "Drifting")
    ]
    ids += [
        "nested_ac/ActionPermutedAcrobot-v0",
        "nested_ac/ActionFlippedPendulum-v0",
        "nested_ac/ActionFlippedMountainCarContinuous-v0",
        "nested_ac/ActionPermutedCartPole-v0",
        "nested_ac/RemappedAcrobot-v0",
        "nested_ac/RemappedPendulum-v0",
    ]
    for env_id in ids:
        assert env_id in NONSTATIONARY_ENVS
        vec = native_vector(env_id, 4, {"task_seed": 0})
        assert isinstance(vec, GymnasiumVecEnv)
        vec.close()
    assert NONSTATIONARY_ENVS["nested_ac/PermutedAcrobot-v0"].return_floor == -500.0
    assert NONSTATIONARY_ENVS["nested_ac/PermutedCartPole-v0"].return_floor is None


def _switching_layer(env):
    while not hasattr(type(env), "set_task"):
        env = env.env
    return env


@pytest.mark.parametrize("world", ["DriftingAcrobot", "DriftingPendulum", "PermutedPendulum"])
def test_single_and_vector_forms_draw_the_same_tasks(world):
    env_id = f"nested_ac/{world}-v0"
    single = _switching_layer(gym.make(env_id, task_seed=5))
    vector = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", task_seed=5)
    vector = _switching_layer(vector)
    for task in (0, 1, 7):
        single.set_task(task)
        vector.set_task(task)
        assert single.task_parameters == vector.task_parameters
        observation = np.linspace(-1, 1, single.observation_space.shape[0]).astype(np.float32)
        np.testing.assert_array_equal(
            single.effect.observation(observation), vector.effect.observation(observation)
        )


def test_stacked_effects_draw_independently():
    # Two parameters redrawn by two stacked wrappers with one task seed: each has its own random stream
    # (one shared stream gave both link masses the same value on every task).
    acrobot = _switching_layer(gym.make("nested_ac/DriftingAcrobot-v0", task_seed=3))
    masses = []
    for task in range(20):
        acrobot.set_task(task)
        masses.append((acrobot.task_parameters["LINK_MASS_1"], acrobot.task_parameters["LINK_MASS_2"]))
    first, second = np.array(masses).T
    assert (first != second).all()
    assert abs(np.corrcoef(np.log(first), np.log(second))[0, 1]) < 0.6
    assert acrobot.unwrapped.LINK_MASS_1 == first[-1] and acrobot.unwrapped.LINK_MASS_2 == second[-1]


def test_every_copy_ending_on_one_step_hands_sb3_one_final_observation_each():
    # Pendulum's copies all reach the time limit together; a task wrapper's transformed final observations
    # stay one array per copy (stacking them into a 2-D object array broke SB3's terminal-value bootstrap).
    env = native_vector("nested_ac/PermutedPendulum-v0", 4, {"task_seed": 0})
    env.seed(0)
    env.reset()
    for _ in range(200):
        _, _, dones, infos = env.step(np.zeros((4, 1), dtype=np.float32))
    assert dones.all()
    for info in infos:
        final = info["terminal_observation"]
        assert final.dtype == np.float32 and final.shape == (3,) and info["TimeLimit.truncated"]
    env.close()


def test_remapped_worlds_change_observation_and_actions_independently_in_both_forms():
    single = _switching_layer(gym.make("nested_ac/RemappedAcrobot-v0", task_seed=2))
    vector = gym.make_vec(
        "nested_ac/RemappedAcrobot-v0", num_envs=2, vectorization_mode="vector_entry_point", task_seed=2
    )
    vector = _switching_layer(vector)
    permutations = []
    for task in range(8):
        single.set_task(task)
        vector.set_task(task)
        for form in (single, vector):  # outer layer: the actions; inner: the observation
            assert type(form.effect).__name__ == "ActionPermutation"
            assert type(form.env.effect).__name__ == "ObservationPermutation"
        np.testing.assert_array_equal(single.effect.permutation, vector.effect.permutation)
        np.testing.assert_array_equal(single.env.effect.permutation, vector.env.effect.permutation)
        permutations.append((tuple(single.effect.permutation), tuple(single.env.effect.permutation)))
    assert len({actions for actions, _ in permutations}) > 1 and len({obs for _, obs in permutations}) > 1
