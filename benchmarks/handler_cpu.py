"""CPU time per act request of mfql's REST handler vs a plain FastAPI + onnxruntime handler, no sockets.

    python benchmarks/handler_cpu.py [--requests 3000] [--rounds 2] [--concurrency 1,32] [--profile]

Both ASGI apps (mfql's `create_app` on the embedded default model, and `benchmarks/peer_onnx.py`)
are called directly on one event loop with the same JSON body, so the figure is the handler
and framework cost alone: routing, parsing, validation, noise, inference, metrics, encoding.
uvicorn, the network and the client are left out (`benchmarks/serve.py --peers` measures them
end to end). At concurrency c, c callers run their share of the requests at once on the loop
(where mfql batches and the plain handler cannot). CPU time counts every thread of the
process (mfql's inference thread too). Rounds alternate between the two apps; the ratios are
what to compare, the absolute figures move with the machine. `--profile` adds a cProfile of
mfql's handler at the first concurrency.
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


async def cpu_and_rate(app, path: str, body: bytes, requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU microseconds per request, requests per second) of `requests` calls by `concurrency` callers."""
    for _ in range(min(200, requests)):  # warm-up: first-call allocations, caches
        assert await call(app, path, body) == 200

    async def caller() -> None:
        for _ in range(requests // concurrency):
            await call(app, path, body)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    done = requests // concurrency * concurrency
    return (time.process_time() - cpu) / done * 1e6, done / (time.perf_counter() - wall)


async def measure(requests: int, rounds: int, concurrencies: list[int], profile: bool) -> dict:
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
    report: dict = {"requests_per_round": requests}
    try:
        for concurrency in concurrencies:
            mfql, plain = [], []
            for _ in range(rounds):
                mfql.append(await cpu_and_rate(app, mfql_path, body, requests, concurrency))
                plain.append(await cpu_and_rate(peer.app, peer_path, body, requests, concurrency))
            report[f"c{concurrency}"] = {
                "mfql_cpu_us": [round(cpu, 1) for cpu, _ in mfql],
                "plain_cpu_us": [round(cpu, 1) for cpu, _ in plain],
                "mfql_per_s": [round(rate) for _, rate in mfql],
                "plain_per_s": [round(rate) for _, rate in plain],
                "cpu_ratio_mfql_vs_plain": round(min(c for c, _ in mfql) / min(c for c, _ in plain), 3),
                "rate_ratio_mfql_vs_plain": round(max(r for _, r in mfql) / max(r for _, r in plain), 3),
            }
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await cpu_and_rate(app, mfql_path, body, requests, concurrencies[0])
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        await app.state.repository.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="requests per app per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,32", help="comma-separated numbers of concurrent callers")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of mfql's handler")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print(json.dumps(asyncio.run(measure(args.requests, args.rounds, concurrencies, args.profile)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
