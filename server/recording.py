"""`--record-dir`: every served step of each session, one JSON Lines file per session episode.

`DIR/<protocol>-<session id>/episode_<NNNNNN>.jsonl`, one JSON object per line and per step,
written and flushed before the answer is sent, so SIGTERM or a crash of the server loses at
most the step in flight. Column names follow LeRobot's data layout (`observation.state`,
`action`, `episode_index`, `frame_index`, `timestamp`) so `pandas.read_json(path, lines=True)`
gives LeRobot-like frames (and `.to_parquet()` its parquet files) without a parquet writer in
the serving install; the rest is mfql's (docs/control-loop.md lists every key). `mfql-replay`
(server/replay.py) reads these files.

Recording wraps the control loop (server/control.py calls `write` after an answer is
settled); the policy and the batcher know nothing of it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Any

import orjson

RECORD_SUFFIX = ".jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def episode_path(directory: Path, session_key: str, episode: int) -> Path:
    protocol, _, name = session_key.partition(":")
    return directory / f"{protocol}-{_UNSAFE.sub('_', name)}" / f"episode_{episode:06d}{RECORD_SUFFIX}"


class EpisodeRecorder:
    """One session episode's file, opened at its first step."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[bytes] = path.open("ab", buffering=0)  # unbuffered: each step reaches the OS at once

    def write(self, step: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(step, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")

    def close(self) -> None:
        self._file.close()


def read_recording(path: Path) -> list[dict[str, Any]]:
    """The steps of one recorded episode, in order (a torn last line, from a crash mid-write, is skipped)."""
    steps = []
    for line in Path(path).read_bytes().splitlines():
        try:
            steps.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return steps
