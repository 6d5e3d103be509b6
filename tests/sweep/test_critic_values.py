"""training/studies/critic_values.py: distances to success, returns to it, and Lights Out distances."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.dataset import make_dataset
from training.data.lights_out import fewest_presses
from training.studies.critic_values import puzzle_goal, puzzle_lights, returns_to_success, steps_to_success


def built_dataset():
    """Episode 1 (rows 0-5) succeeds at rows 3 and 5; episode 2 (rows 6-9) never does."""
    success = np.array([0, 0, 0, 1, 0, 1, 0, 0, 0, 0], dtype=np.float32)
    terminals = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 1], dtype=np.float32)
    observations = np.zeros((10, 3), dtype=np.float32)
    return make_dataset(
        "built", observations, np.zeros((10, 2), dtype=np.float32), success - 1.0, 1.0 - success,
        terminals, observations,
    )  # fmt: skip


def test_steps_to_success_count_rows_to_the_next_success_in_the_episode():
    assert steps_to_success(built_dataset()).tolist() == [3, 2, 1, 0, 1, 0, -1, -1, -1, -1]


def test_returns_to_success_by_hand():
    dataset = built_dataset()
    returns = returns_to_success(dataset, steps_to_success(dataset), discount=0.9)
    # sparse rewards: -(1 - 0.9^d) / (1 - 0.9) d rows before success
    assert np.allclose(returns[:6], [-2.71, -1.9, -1.0, 0.0, -1.0, 0.0])
    assert np.isnan(returns[6:]).all()


def test_puzzle_lights_read_the_button_one_hots():
    lights = np.array([[1, 0, 1], [0, 0, 1]])
    observations = np.zeros((2, 19 + 4 * 3), dtype=np.float32)
    for button in range(3):
        observations[:, 19 + 4 * button] = 1 - lights[:, button]
        observations[:, 19 + 4 * button + 1] = lights[:, button]
        observations[:, 19 + 4 * button + 2] = 0.7  # position and velocity are not lights
    assert puzzle_lights(observations, 3).tolist() == lights.tolist()
    with pytest.raises(ValueError, match="has 31 numbers; got 55"):
        puzzle_lights(np.zeros((1, 55)), 3)


def test_puzzle_goal_is_the_tasks_goal_and_none_elsewhere():
    goal, grid = puzzle_goal("puzzle-3x3-play-singletask-task4-v0")
    assert grid == (3, 3) and goal.shape == (9,)
    # OGBench's task4 needs all nine presses from its start (mfql-data info: fewest_presses 9)
    import gymnasium
    import ogbench.manipspace  # noqa: F401

    env = gymnasium.make("puzzle-3x3-singletask-task4-v0")
    start = env.unwrapped.task_infos[3]["init_button_states"]
    env.close()
    assert fewest_presses(start, goal, 3, 3) == 9
    assert puzzle_goal("cube-single-play-singletask-task2-v0") is None
    assert puzzle_goal("not-an-ogbench-name") is None
