"""Presses and presses left in evaluations of puzzle envs (training/puzzle_progress.py): counts by
hand on built light sequences, a real OGBench puzzle evaluation, and the evaluations.csv columns."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.evaluate import evaluate_policy
from training.puzzle_progress import PuzzleProgress
from training.run_log import EVAL_CSV, RunLog

TASK4_START = [0, 1, 0, 1, 0, 1, 0, 1, 0]  # OGBench puzzle-3x3 task4: all nine presses to all-on
CENTRE_PRESSED = [0, 0, 0, 0, 1, 0, 0, 0, 0]  # the centre flips itself and its four neighbours


def _tracker(goal) -> PuzzleProgress:
    env = SimpleNamespace(unwrapped=SimpleNamespace(cur_task_info={"goal_button_states": np.array(goal)}))
    tracker = PuzzleProgress.for_env("puzzle-3x3-play-singletask-task4-v0", env)
    assert tracker is not None
    return tracker


def _lights(states) -> dict:
    return {"button_states": np.array(states)}


def test_presses_and_presses_left_by_hand():
    tracker = _tracker([1] * 9)
    # episode 1: press the centre (9 -> 8 left: 3x3 Lights Out has one solution, all nine
    # buttons, and the centre is one of them), hold still, press it again (back to 9)
    tracker.start(_lights(TASK4_START))
    for states in (TASK4_START, CENTRE_PRESSED, CENTRE_PRESSED, TASK4_START):
        tracker.step(_lights(states))
    tracker.finish()
    # episode 2: one step from the goal (the centre pressed once more solves it), then solved
    one_left = np.array([1] * 9)
    one_left[[1, 3, 4, 5, 7]] ^= 1
    tracker.start(_lights(one_left))
    tracker.step(_lights([1] * 9))
    tracker.finish()
    assert tracker.presses == [2, 1]
    assert tracker.left_at_start == [9, 1]
    assert tracker.left_best == [8, 0]
    assert tracker.left_at_end == [9, 0]
    assert tracker.summary() == {
        "presses_per_episode": 1.5,
        "presses_left_start": 5.0,
        "presses_left_end": 4.5,
        "presses_left_best": 4.0,
    }


def test_only_puzzle_envs_are_tracked_and_infos_must_hold_the_lights():
    env = SimpleNamespace(unwrapped=SimpleNamespace(cur_task_info={"goal_button_states": np.ones(9)}))
    assert PuzzleProgress.for_env("cube-single-play-singletask-task2-v0", env) is None
    assert (
        PuzzleProgress.for_env("puzzle-3x3-play-singletask-task4-v0", SimpleNamespace(unwrapped=object()))
        is None
    )
    tracker = _tracker([1] * 9)
    with pytest.raises(ValueError, match="no 'button_states'"):
        tracker.start({})


class StandStill:
    """A one-action 'policy' that always sends zeros: the arm holds, no button moves."""

    action_horizon = 1
    noise_shape = (5,)

    def __call__(self, observation, noise):
        return torch.zeros(observation.shape[0], 5), torch.zeros(observation.shape[0]), None


@pytest.mark.parametrize(("task", "fewest"), [(1, 2), (4, 9)])
def test_a_real_puzzle_evaluation_reports_progress(task, fewest):
    result = evaluate_policy(
        StandStill(),
        f"puzzle-3x3-play-singletask-task{task}-v0",
        episodes=1,
        num_candidates=1,
        seed=0,
        progress=False,
    )
    assert result["puzzle_progress"] == {
        "presses_per_episode": 0.0,
        "presses_left_start": float(fewest),  # mfql-data info: task1 needs 2, task4 all 9
        "presses_left_end": float(fewest),
        "presses_left_best": float(fewest),
    }


def test_evaluations_csv_holds_the_progress_columns(tmp_path):
    result = {
        "success_rate": 0.0,
        "success_rate_stderr": 0.0,
        "mean_return": -10.0,
        "mean_episode_length": 500.0,
        "episodes": 2,
        "num_candidates": 32,
        "puzzle_progress": {
            "presses_per_episode": 3.5,
            "presses_left_start": 9.0,
            "presses_left_end": 7.0,
            "presses_left_best": 6.5,
        },
    }
    log = RunLog(tmp_path)
    log.evaluation(1000, result)
    log.close()
    with open(tmp_path / EVAL_CSV, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["presses_per_episode"]) == 3.5 and float(row["presses_left_best"]) == 6.5


def test_sweep_rows_carry_the_progress_of_puzzle_evaluations_only():
    from training.sweep.trainable import _progress_of

    progress = {"presses_per_episode": 1.0}
    assert _progress_of({"success_rate": 0.0, "puzzle_progress": progress}) == {"puzzle_progress": progress}
    assert _progress_of({"success_rate": 0.0}) == {}
