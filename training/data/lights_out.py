"""How many button presses an OGBench puzzle task needs at the fewest: Lights Out over GF(2).

OGBench's puzzle envs are Lights Out: pressing a button flips it and its up/down/left/right
neighbours (`PuzzleEnv.post_step`). Presses commute and pressing twice undoes, so a solution
is a set of buttons x with A x = start XOR goal (mod 2), A the press matrix. Gaussian
elimination gives one solution and the null space (pressing a null-space set changes
nothing); the fewest presses is the smallest solution over that coset, at most 2**nullity
candidates (3x3: 1, 4x4: 16).

`mfql-data info` prints the count per task because the data do not show how hard a task is:
the play oracle visits every goal pattern about equally, while puzzle-3x3 task1 needs 2
presses and task4 all 9 (docs/results/puzzle.md).
"""

from __future__ import annotations

import itertools
import re

import numpy as np

_PUZZLE_ENV = re.compile(r"puzzle-(\d+)x(\d+)-v\d+")


def puzzle_grid(collection_env: str) -> tuple[int, int] | None:
    """'puzzle-4x4-v0' -> (4, 4); None for any env that is not a puzzle."""
    match = _PUZZLE_ENV.fullmatch(collection_env)
    return (int(match.group(1)), int(match.group(2))) if match else None


def press_matrix(rows: int, cols: int) -> np.ndarray:
    """(n, n) 0/1 matrix, n = rows * cols: column j holds the lights that pressing button j flips."""
    n = rows * cols
    matrix = np.zeros((n, n), dtype=np.uint8)
    for button in range(n):
        row, col = divmod(button, cols)
        for d_row, d_col in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
            r, c = row + d_row, col + d_col
            if 0 <= r < rows and 0 <= c < cols:
                matrix[r * cols + c, button] = 1
    return matrix


def _solve_mod2(matrix: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """One x with matrix @ x = target (mod 2) and a basis of the null space; None if unsolvable."""
    n_rows, n_cols = matrix.shape
    augmented = np.concatenate([matrix, target[:, None]], axis=1).astype(np.uint8) % 2
    pivot_cols: list[int] = []
    row = 0
    for col in range(n_cols):
        candidates = np.flatnonzero(augmented[row:, col]) + row
        if len(candidates) == 0:
            continue
        augmented[[row, candidates[0]]] = augmented[[candidates[0], row]]
        others = np.flatnonzero(augmented[:, col])
        others = others[others != row]
        augmented[others] ^= augmented[row]
        pivot_cols.append(col)
        row += 1
        if row == n_rows:
            break
    if augmented[row:, -1].any():  # a row 0 = 1 is left: the target is outside A's column space
        return None
    particular = np.zeros(n_cols, dtype=np.uint8)
    for pivot_row, col in enumerate(pivot_cols):
        particular[col] = augmented[pivot_row, -1]
    null_space = []
    for free in sorted(set(range(n_cols)) - set(pivot_cols)):
        vector = np.zeros(n_cols, dtype=np.uint8)
        vector[free] = 1
        for pivot_row, col in enumerate(pivot_cols):
            vector[col] = augmented[pivot_row, free]
        null_space.append(vector)
    return particular, null_space


def fewest_presses(start, goal, rows: int, cols: int) -> int:
    """The fewest presses that turn the lights `start` into `goal` (flat 0/1 arrays, row-major).

    Raises ValueError when the shapes do not match the grid or no set of presses gets there.
    """
    start = np.asarray(start).astype(np.uint8).ravel()
    goal = np.asarray(goal).astype(np.uint8).ravel()
    n = rows * cols
    if start.shape != (n,) or goal.shape != (n,):
        raise ValueError(f"expected {n} lights for a {rows}x{cols} puzzle, got {start.size} and {goal.size}")
    solved = _solve_mod2(press_matrix(rows, cols), start ^ goal)
    if solved is None:
        raise ValueError(f"no set of presses turns {start.tolist()} into {goal.tolist()} on {rows}x{cols}")
    particular, null_space = solved
    best = n
    for chosen in itertools.product((0, 1), repeat=len(null_space)):
        presses = particular.copy()
        for use, vector in zip(chosen, null_space, strict=True):
            if use:
                presses ^= vector
        best = min(best, int(presses.sum()))
    return best
