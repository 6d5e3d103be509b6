"""The fewest-presses count for OGBench's puzzle tasks (Lights Out over GF(2)), and its place in `mfql-data info`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from training.data.cli import main as data_main
from training.data.collection import CollectionConfig
from training.data.generate import generate_dataset, silence_harmless_env_warnings
from training.data.lights_out import fewest_presses, press_matrix, puzzle_grid
from training.data.summary import puzzle_task_distance


def brute_force_fewest(rows: int, cols: int) -> dict[tuple, int]:
    """Every reachable flip pattern -> the fewest presses, by trying all 2**n press sets."""
    n = rows * cols
    subsets = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int64)
    flips = (subsets @ press_matrix(rows, cols).T.astype(np.int64)) % 2
    best: dict[tuple, int] = {}
    for flip, presses in zip(map(tuple, flips), subsets.sum(axis=1), strict=True):
        best[flip] = min(best.get(flip, n), int(presses))
    return best


def test_press_matrix_flips_the_button_and_its_four_neighbours():
    matrix = press_matrix(3, 3)
    assert matrix[:, 4].tolist() == [0, 1, 0, 1, 1, 1, 0, 1, 0]  # centre: a plus
    assert matrix[:, 0].tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0]  # corner: itself, right, below
    assert matrix[:, 5].tolist() == [0, 0, 1, 0, 1, 1, 0, 0, 1]  # right edge
    assert press_matrix(4, 5).shape == (20, 20) and press_matrix(4, 5).sum() == 20 * 5 - 2 * (4 + 5)


def test_hand_derived_counts():
    assert fewest_presses([0] * 9, [0] * 9, 3, 3) == 0
    assert fewest_presses([0, 1, 0, 1, 1, 1, 0, 1, 0], [0] * 9, 3, 3) == 1  # undo one centre press
    # Pressing all nine flips corners 3 times, edges 4, the centre 5: the chequerboard. The
    # 3x3 press matrix is invertible, so all nine presses are the only way there.
    assert fewest_presses([0] * 9, [1, 0, 1, 0, 1, 0, 1, 0, 1], 3, 3) == 9
    # 4x4 has press sets that change nothing (a null space), yet lights already at the goal need 0.
    assert fewest_presses(np.ones(16), np.ones(16), 4, 4) == 0


@pytest.mark.parametrize("rows,cols", [(3, 3), (4, 4)])
def test_matches_brute_force_on_random_patterns(rows, cols):
    best = brute_force_fewest(rows, cols)
    rng = np.random.default_rng(0)
    n = rows * cols
    checked = unsolvable = 0
    for _ in range(200):
        start, goal = rng.integers(0, 2, n), rng.integers(0, 2, n)
        flip = tuple((start ^ goal).tolist())
        if flip in best:
            assert fewest_presses(start, goal, rows, cols) == best[flip]
            checked += 1
        else:
            with pytest.raises(ValueError, match="no set of presses"):
                fewest_presses(start, goal, rows, cols)
            unsolvable += 1
    assert checked > 0
    # 3x3 reaches every pattern; 4x4's press matrix has rank 12, so 15 in 16 patterns are out of reach.
    assert (unsolvable == 0) == (rows == 3) and len(best) == 2 ** (n - (0 if rows == 3 else 4))


def test_bad_shapes_and_non_puzzle_envs():
    with pytest.raises(ValueError, match="expected 9 lights for a 3x3 puzzle, got 8 and 9"):
        fewest_presses([0] * 8, [0] * 9, 3, 3)
    assert puzzle_grid("puzzle-4x6-v0") == (4, 6) and puzzle_grid("cube-single-v0") is None
    assert puzzle_task_distance("cube-single-v0", {"task_name": "task1"}) == {}


def test_info_cli_reports_how_far_each_puzzle_task_starts_from_its_goal(tmp_path, capsys):
    out = tmp_path / "puzzle-3x3-play-v0.npz"
    with warnings.catch_warnings():
        silence_harmless_env_warnings()
        generate_dataset(
            CollectionConfig("puzzle-3x3-v0", "play", episode_length=20), 1, 0, 1, out, progress=False
        )
    assert data_main(["info", str(out), "--tasks", "1,4"]) == 0
    tasks = json.loads(capsys.readouterr().out)["tasks"]
    # OGBench's puzzle-3x3 task1 starts 6 lights off the goal, 2 presses away; task4 (its
    # default task) 5 lights off, and only pressing every one of the 9 buttons gets there.
    assert (tasks["task1"]["lights_wrong_at_start"], tasks["task1"]["fewest_presses"]) == (6, 2)
    assert (tasks["task4"]["lights_wrong_at_start"], tasks["task4"]["fewest_presses"]) == (5, 9)
