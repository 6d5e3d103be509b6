"""What sessions and recording cost on the hot path: REST and WebSocket c = 1 latency, on and off.

Two `mfql-serve` processes on the same repository, one plain and one with `--record-dir`, and
one client process driving both in interleaved rounds, so both see the same machine load:
- REST "off": stateless requests to the plain server; "on": the same requests with a
  `session_id` to the recording server (each answer updates the session and writes a line);
- WebSocket "off": an openpi-style connection (no control keys) to the plain server; "on": a
  connection to the recording server whose messages carry `client_step` (the session's step
  counter and clock echo) and are recorded.
It prints the p50 / p99 of each and the on / off ratios (the issue's goal: p50 within 10 %).

    python benchmarks/control_overhead.py --repository server/default_model --model cube-single --requests 400 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BOUND = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@contextlib.contextmanager
def server(repository: Path, *extra: str):
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    command = [
        sys.executable,
        "-m",
        "server.cli",
        "--model-repository",
        str(repository),
        "--port",
        "0",
        *extra,
    ]
    env = {**os.environ, "MFQL_INTRA_OP_THREADS": "1", "MFQL_INTER_OP_THREADS": "1"}
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 90
        port = None
        while time.monotonic() < deadline and port is None:
            match = BOUND.search(log.read_text())
            port = int(match.group(1)) if match else None
            time.sleep(0.1)
        import httpx

        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.unlink(missing_ok=True)


def timed(call, count: int) -> list[float]:
    times = []
    for step in range(count):
        started = time.perf_counter()
        call(step)
        times.append((time.perf_counter() - started) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=ROOT / "server/default_model")
    parser.add_argument("--model", default="cube-single")
    parser.add_argument("--requests", type=int, default=400, help="requests per cell per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from clients import PolicyClient, WebSocketPolicyClient

    record_dir = Path(tempfile.mkdtemp(prefix="mfql-record-"))
    results: dict[str, list[float]] = {k: [] for k in ("rest off", "rest on", "ws off", "ws on")}
    with (
        server(args.repository) as plain,
        server(args.repository, "--record-dir", str(record_dir)) as recording,
    ):
        rest_plain = PolicyClient(plain, model=args.model)
        rest_rec = PolicyClient(recording, model=args.model)
        observation = np.zeros(rest_plain.metadata().obs_dim, np.float32)
        ws_plain = WebSocketPolicyClient(plain.replace("http", "ws"), model=args.model)
        ws_rec = WebSocketPolicyClient(recording.replace("http", "ws"), model=args.model)
        cells = {
            "rest off": lambda i: rest_plain.act(observation, seed=i),
            "rest on": lambda i: rest_rec.act(observation, seed=i, control={"session_id": "bench"}),
            "ws off": lambda i: ws_plain.infer(observation, seed=i),
            "ws on": lambda i: ws_rec.infer(observation, seed=i, control={"client_step": i}),
        }
        for call in cells.values():  # warm-up: connections, sessions, first inference
            timed(call, 20)
        for _ in range(args.rounds):
            for name, call in cells.items():
                results[name] += timed(call, args.requests)
        recorded = sum(1 for path in record_dir.rglob("*") if path.is_file())
    summary = {
        name: {
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
            "n": len(values),
        }
        for name, values in results.items()
    }
    for protocol in ("rest", "ws"):
        summary[f"{protocol} on/off p50"] = (
            summary[f"{protocol} on"]["p50_ms"] / summary[f"{protocol} off"]["p50_ms"]
        )
    summary["recording files"] = recorded
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
