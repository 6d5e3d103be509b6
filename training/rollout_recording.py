"""`mfql-eval --record-dir DIR`: every request of an evaluation, one JSON Lines file per episode.

`DIR/episode_<NNNNNN>.jsonl` (NNNNNN: the episode's index in the evaluation), one JSON object
per request to the policy, in the layout of the server's recordings (server/recording.py,
docs/control-loop.md) so the same readers serve both: `episode_index`, `frame_index` (the env
step the request was made at), `observation.state`, `action` (the chosen action, or chunk
[H, d], in the data's units), `q_value`, `seed` (the episode's env seed), `num_candidates`,
`action_horizon`; and what executing it gave: `executed` (actions run before the next
request), `next.reward` (their summed reward), `next.done`, and `next.success` where the env
reports success. `pandas.read_json(path, lines=True)` reads a file.

Each line is written when its actions have run, so an interrupted evaluation keeps every
finished request.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RECORD_GLOB = "episode_*.jsonl"


def check_record_dir(directory: Path) -> None:
    """Refuse a directory that already holds recorded episodes: a recording never overwrites one."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--record-dir {directory} is a file; expected a directory for episode_*.jsonl")
    if directory.is_dir() and any(directory.glob(RECORD_GLOB)):
        raise ValueError(
            f"--record-dir {directory} already holds recorded episodes ({RECORD_GLOB}); name a new directory"
        )


class RolloutRecorder:
    """The requests of one evaluation, one file per episode."""

    def __init__(self, directory: Path, num_candidates: int, action_horizon: int):
        check_record_dir(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.common = {"num_candidates": num_candidates, "action_horizon": action_horizon}
        self._file = None
        self._pending: dict | None = None

    def start(self, episode: int, seed: int) -> None:
        self.finish()
        self._file = (self.directory / f"episode_{episode:06d}.jsonl").open("w")
        self._episode = {"episode_index": episode, "seed": seed}

    def request(self, frame: int, observation: np.ndarray, action: np.ndarray, q_value: float) -> None:
        """A request at env step `frame`; written once its actions have run (`executed`)."""
        self._flush()
        self._pending = {
            **self._episode,
            "frame_index": frame,
            "observation.state": np.asarray(observation, dtype=np.float64).tolist(),
            "action": np.asarray(action, dtype=np.float64).tolist(),
            "q_value": float(q_value),
            **self.common,
            "executed": 0,
            "next.reward": 0.0,
            "next.done": False,
        }

    def executed(self, reward: float, done: bool, success: float | None) -> None:
        """One action of the pending request ran in the env."""
        pending = self._pending
        pending["executed"] += 1
        pending["next.reward"] += float(reward)
        pending["next.done"] = bool(done)
        if success is not None:
            pending["next.success"] = float(success)

    def _flush(self) -> None:
        if self._pending is not None:
            self._file.write(json.dumps(self._pending) + "\n")
            self._file.flush()
            self._pending = None

    def finish(self) -> None:
        """Close the current episode's file (after its last request's actions)."""
        self._flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def read_requests(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every recorded request's observation [N, obs_dim] and chosen action [N, d] (a chunk
    flattened to H * d), episodes in order; a torn last line (an interrupted write) is skipped."""
    files = sorted(Path(directory).glob(RECORD_GLOB))
    if not files:
        raise ValueError(
            f"{directory}: no recorded episodes ({RECORD_GLOB}; written by mfql-eval --record-dir)"
        )
    observations, actions = [], []
    for path in files:
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                observation, action = row["observation.state"], row["action"]
            except (ValueError, KeyError):
                continue
            observations.append(observation)
            actions.append(np.ravel(action))
    return np.asarray(observations, dtype=np.float32), np.asarray(actions, dtype=np.float32)
