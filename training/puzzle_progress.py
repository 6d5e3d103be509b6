"""Progress on OGBench puzzle tasks during evaluation: presses made and presses still needed.

Success on a puzzle task is all-or-nothing at the episode's end, so a policy that presses the
right buttons but too slowly reads 0.00 exactly like one that never presses. Evaluations of a
puzzle env also record, per episode, how many presses the policy made (a press is a step where
the lights change: one press flips a button and its neighbours) and the fewest presses still
needed to reach the task's goal (Lights Out distance, `training.data.lights_out`) at the start,
at the end and at the best point of the episode. docs/results/best-of-n.md (round 11) found
the failure these separate: on task4 best of 32 stopped pressing while behaviour cloning pressed
three times slower than the data.

The lights come from the env's `info["button_states"]` (OGBench's puzzle envs report them after
every reset and step) and the goal from the task's `goal_button_states` (`cur_task_info`); any other env has no
progress to record (`PuzzleProgress.for_env` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.data.lights_out import fewest_presses, puzzle_grid
from training.data.task_names import parse_task_name


@dataclass
class PuzzleProgress:
    """Presses and presses left over the episodes of one evaluation, for a grid and a goal."""

    rows: int
    cols: int
    task_source: object  # the unwrapped env: its `cur_task_info` holds the episode's goal
    presses: list[int] = field(default_factory=list)  # per finished episode
    left_at_start: list[int] = field(default_factory=list)
    left_at_end: list[int] = field(default_factory=list)
    left_best: list[int] = field(default_factory=list)
    _lights: np.ndarray | None = None
    _goal: np.ndarray | None = None
    _count: int = 0
    _left_now: int = 0  # the fewest presses left from the current lights

    @classmethod
    def for_env(cls, env_name: str, env) -> PuzzleProgress | None:
        """The tracker of an OGBench puzzle env's evaluation; None for any other env."""
        try:
            grid = puzzle_grid(parse_task_name(env_name).collection_env)
        except ValueError:  # not an OGBench singletask name
            return None
        if grid is None or not hasattr(env.unwrapped, "cur_task_info"):
            return None
        return cls(*grid, env.unwrapped)

    def _update_left(self) -> None:
        self._left_now = fewest_presses(self._lights, self._goal, self.rows, self.cols)

    def start(self, info: dict) -> None:
        """An episode begins: `info` is the reset's (the task, and so the goal, is set by then)."""
        self._goal = np.asarray(self.task_source.cur_task_info["goal_button_states"]).astype(np.uint8)
        self._lights = self._read(info)
        self._count = 0
        self._update_left()
        self.left_at_start.append(self._left_now)
        self.left_best.append(self._left_now)

    def step(self, info: dict) -> None:
        """After each env step: a change of the lights is a press."""
        lights = self._read(info)
        if not np.array_equal(lights, self._lights):
            self._count += 1
            self._lights = lights
            self._update_left()
            self.left_best[-1] = min(self.left_best[-1], self._left_now)

    def finish(self) -> None:
        """The episode ended."""
        self.presses.append(self._count)
        self.left_at_end.append(self._left_now)

    def _read(self, info: dict) -> np.ndarray:
        if "button_states" not in info:
            raise ValueError("a puzzle env's info has no 'button_states': is it an OGBench puzzle env?")
        return np.asarray(info["button_states"]).astype(np.uint8).ravel()

    def summary(self) -> dict[str, float]:
        """Means over the finished episodes (keys as evaluations.csv's columns)."""
        return {
            "presses_per_episode": float(np.mean(self.presses)),
            "presses_left_start": float(np.mean(self.left_at_start[: len(self.presses)])),
            "presses_left_end": float(np.mean(self.left_at_end)),
            "presses_left_best": float(np.mean(self.left_best[: len(self.presses)])),
        }
