"""Real `mfql-serve` processes on 127.0.0.1, with their process handle and log.

Each server binds `--port 0` (the kernel picks a free port and the server holds it from the
start) and the port is read back from uvicorn's "Uvicorn running on ..." log line, so two
servers can never race for a port that was picked, released and then taken by someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BOUND = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
_logs = itertools.count()


def console_script(name: str, module: str) -> list[str]:
    """The installed console script `name`, else `python -m module` (same entry point)."""
    executable = shutil.which(name, path=str(Path(sys.executable).parent))
    return [executable] if executable else [sys.executable, "-m", module]


def serve_command() -> list[str]:
    return console_script("mfql-serve", "server.cli")


@dataclass
class LiveServer:
    process: subprocess.Popen
    log: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text()

    def log_tail(self) -> str:
        return self.log_text()[-3000:]


@contextlib.contextmanager
def serving(
    repository: Path, *args: str, ready_timeout: float = 60.0, log_dir: Path | None = None
) -> Iterator[LiveServer]:
    """Start the server, wait for /v2/health/ready, yield it; SIGTERM it (then kill) on the way out.

    The log goes beside the repository unless `log_dir` is given."""
    log = (log_dir or repository.parent) / f"server-{os.getpid()}-{next(_logs)}.log"
    command = [*serve_command(), "--model-repository", str(repository), "--host", "127.0.0.1", "--port", "0"]
    env = {**os.environ, "MFQL_INTRA_OP_THREADS": "1", "MFQL_INTER_OP_THREADS": "1"}
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*command, *args], stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
    server = LiveServer(process, log)
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
    """Read the bound port from the log, then poll readiness, until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"mfql-serve exited with {server.process.returncode}:\n{server.log_tail()}")
        if not server.port:
            bound = BOUND.search(server.log_text())
            server.port = int(bound[1]) if bound else 0
        if server.port:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return
        time.sleep(0.05)
    pytest.fail(f"mfql-serve not ready after {timeout} s:\n{server.log_tail()}")


def wait_until(condition, timeout: float = 20.0, interval: float = 0.02, message: str = "condition"):
    """Poll `condition` until it returns something true (returned) or `timeout` passes (test fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{message} not met within {timeout} s")


async def eventually(condition, timeout: float = 10.0) -> None:
    """Let the event loop run until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.001)


# 20 ms queue delay: concurrent test requests reliably share batches
BATCHING_OPTIONS = ("--max-queue-delay-us", "20000", "--max-batch-size", "64")
