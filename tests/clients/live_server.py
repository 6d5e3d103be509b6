"""Real ``mfql-serve`` processes on 127.0.0.1 for the client tests, and the model they serve."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]

CUBE = "cube"  # cube-single's dims, so mfql-rollout can drive the real env with it
CUBE_OBS_DIM, CUBE_ACTION_DIM = 28, 5
CUBE_ENV = "cube-single-play-singletask-task2-v0"
API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def console_script(name: str, module: str) -> list[str]:
    """The installed console script ``name``, else ``python -m module`` (same entry point)."""
    executable = shutil.which(name, path=str(Path(sys.executable).parent))
    return [executable] if executable else [sys.executable, "-m", module]


def serve_command() -> list[str]:
    return console_script("mfql-serve", "server.cli")


@contextlib.contextmanager
def running_server(repository: Path, *extra_args: str, ready_timeout: float = 60.0) -> Iterator[str]:
    """Start ``mfql-serve`` on a free port, wait for /v2/health/ready, yield its URL, stop it."""
    port = free_port()
    command = [
        *serve_command(),
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = repository.parent / f"server-{port}.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*command, *extra_args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=os.environ.copy(),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log, ready_timeout)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mfql-serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"mfql-serve not ready after {timeout} s:\n{log.read_text()[-3000:]}")
