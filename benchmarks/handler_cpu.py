"""CPU time per act request of mfql's REST handler vs a plain FastAPI + onnxruntime handler, no sockets.

    python benchmarks/handler_cpu.py [--requests 3000] [--rounds 2] [--profile]

Both ASGI apps (mfql's `create_app` on the embedded default model, and `benchmarks/peer_onnx.py`)
are called directly on one event loop with the same JSON body, so the figure is the handler
and framework cost alone: routing, parsing, validation, noise, inference, metrics, encoding.
uvicorn, the network and the client are left out (`benchmarks/serve.py --peers` measures them
end to end). Rounds alternate between the two apps; the ratio is what to compare, the absolute
microseconds move with the machine. `--profile` adds a cProfile of mfql's handler.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "server/default_model/cube-single/1"


def act_scope(path: str, body: bytes) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }


async def call(app, path: str, body: bytes) -> int:
    """One request through the ASGI app; returns the status code."""
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    status = 0

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(act_scope(path, body), receive, send)
    return status


async def cpu_per_request_us(app, path: str, body: bytes, requests: int) -> float:
    for _ in range(min(200, requests)):  # warm-up: first-call allocations, caches
        assert await call(app, path, body) == 200
    started = time.process_time()
    for _ in range(requests):
        await call(app, path, body)
    return (time.process_time() - started) / requests * 1e6


async def measure(requests: int, rounds: int, profile: bool) -> dict:
    os.environ.setdefault("MFQL_PEER_BUNDLE", str(BUNDLE))
    sys.path.insert(0, str(ROOT))
    import benchmarks.peer_onnx as peer
    from server.app import create_app
    from server.settings import ServerSettings

    metadata = json.loads((BUNDLE / "metadata.json").read_text())
    observation = np.random.default_rng(0).standard_normal(metadata["obs_dim"]).round(4).tolist()
    body = json.dumps({"observation": observation}).encode()
    app = create_app(ServerSettings())
    await app.state.repository.reload()
    mfql_path, peer_path = "/v1/act", f"/v1/models/{metadata['name']}/act"
    try:
        mfql, plain = [], []
        for _ in range(rounds):
            mfql.append(await cpu_per_request_us(app, mfql_path, body, requests))
            plain.append(await cpu_per_request_us(peer.app, peer_path, body, requests))
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(requests):
                await call(app, mfql_path, body)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        await app.state.repository.close()
    return {
        "requests_per_round": requests,
        "mfql_cpu_us": [round(v, 1) for v in mfql],
        "plain_fastapi_onnxruntime_cpu_us": [round(v, 1) for v in plain],
        "ratio_mfql_vs_plain": round(min(mfql) / min(plain), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="requests per app per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of mfql's handler")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.requests, args.rounds, args.profile)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
