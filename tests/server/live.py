"""Real `mfql-serve` processes on 127.0.0.1 (a free port each), with their process handle and log."""

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
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def console_script(name: str, module: str) -> list[str]:
    """The installed console script `name`, else `python -m module` (same entry point)."""
    executable = shutil.which(name, path=str(Path(sys.executable).parent))
    return [executable] if executable else [sys.executable, "-m", module]


def serve_command() -> list[str]:
    return console_script("mfql-serve", "server.cli")


@dataclass
class LiveServer:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:]


@contextlib.contextmanager
def serving(repository: Path, *args: str, ready_timeout: float = 60.0) -> Iterator[LiveServer]:
    """Start the server, wait for /v2/health/ready, yield it; SIGTERM it (then kill) on the way out."""
    port = free_port()
    log = repository.parent / f"server-{port}.log"
    command = [
        *serve_command(),
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "MFQL_INTRA_OP_THREADS": "1", "MFQL_INTER_OP_THREADS": "1"}
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*command, *args], stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
    server = LiveServer(f"http://127.0.0.1:{port}", port, process, log)
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(server: LiveServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"mfql-serve exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"mfql-serve not ready after {timeout} s:\n{server.log_tail()}")


def wait_until(condition, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{message} not met within {timeout} s")
