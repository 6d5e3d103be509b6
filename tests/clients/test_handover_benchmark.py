"""benchmarks/handover.py runs end to end: a real server, the real cube-single env, its table, JSON and plot."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.clients.live_server import CHUNK_HORIZON, CHUNKED, CUBE_ACTION_DIM, CUBE_ENV, CUBE_OBS_DIM
from tests.clients.tiny_bundle import write_bundle

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_hand_over_benchmark_reports_every_setting_and_writes_its_plot(tmp_path):
    repository = tmp_path / "repository"
    write_bundle(
        repository / CHUNKED / "1", CHUNKED, CUBE_OBS_DIM, CUBE_ACTION_DIM, CUBE_ENV,
        action_horizon=CHUNK_HORIZON, control_period_s=0.05,
    )  # fmt: skip
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "handover.py"), "--repository", str(repository),
            "--model", CHUNKED, "--env", CUBE_ENV, "--episodes", "1", "--replan-every", "2",
            "--delay-steps", "1", "--weights", "10", "--handover-scale", "spread", "--num-candidates", "4",
            "--port", str(free_port()), "--out", str(out),
        ],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "handover.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == [
        "off (lambda 0)", "lambda 10 x Q spread", "lambda 10 x Q spread + pin"
    ]  # fmt: skip
    # the server reports the candidates' Q range at every hand-over it scores (none when off)
    assert rows[0]["mean_handover_q_spread"] is None
    assert all(row["mean_handover_q_spread"] >= 0 for row in rows[1:])
    for row in rows:
        boundary, within, every = (
            row["mean_boundary_change"], row["mean_within_chunk_change"], row["mean_step_change"]
        )  # fmt: skip
        # every step is a hand-over or not, so the overall mean lies between the two
        assert min(boundary, within) - 1e-9 <= every <= max(boundary, within) + 1e-9
    assert (out / "handover.png").stat().st_size > 10_000
    assert "| excess at hand-overs | Q spread there |" in done.stdout
    assert done.stdout.count("| lambda 10 x Q spread") == 2
