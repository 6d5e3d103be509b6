"""Each example in clients/examples runs against a real server (a few steps, fake sensors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.live_server import CUBE

EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "examples"


@pytest.mark.parametrize(
    ("script", "url"),
    [
        ("rest_control_loop.py", "{http}"),
        ("websocket_control_loop.py", "{ws}"),
        ("triton_client_loop.py", "{hostport}"),
    ],
)
def test_example_runs_three_steps(server_url, script, url):
    hostport = server_url.removeprefix("http://")
    url = url.format(http=server_url, ws=f"ws://{hostport}", hostport=hostport)
    command = [sys.executable, str(EXAMPLES / script), "--url", url, "--model", CUBE, "--steps", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("action ") for line in result.stdout.splitlines()) == 3
