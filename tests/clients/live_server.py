"""Real ``mfql-serve`` processes on 127.0.0.1 for the client tests, and the model they serve."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

# One way to start a real server for every test folder; re-exported for the client tests.
from tests.server.live import console_script, serve_command, serving

__all__ = ["console_script", "running_server", "serve_command"]

CUBE = "cube"  # cube-single's dims, so mfql-rollout can drive the real env with it
CUBE_OBS_DIM, CUBE_ACTION_DIM = 28, 5
CUBE_ENV = "cube-single-play-singletask-task2-v0"
CHUNKED = "cube-chunked"  # cube-single's dims, answering chunks of CHUNK_HORIZON actions
CHUNK_HORIZON = 3
API_KEY = "test-key-0123456789"


@contextlib.contextmanager
def running_server(repository: Path, *extra_args: str, ready_timeout: float = 60.0) -> Iterator[str]:
    """Start `mfql-serve` on a port of its own, wait for /v2/health/ready, yield its URL, stop it."""
    with serving(repository, *extra_args, ready_timeout=ready_timeout) as server:
        yield server.url
