"""``mfql-bench``: a load generator for an mfql server, bounded in requests and in time.

Synthetic observations (no env feedback) go out over ``--concurrency`` in-flight slots:
by default each slot sends its next request as soon as the last one is answered; with
``--rate R`` arrivals are scheduled at R per second whatever the answers (open loop), and
latency counts from the scheduled time, so a stalled server cannot hide its queue
(coordinated omission). Nothing is retried: every refusal is counted by its status.
``--compare-batching URL2`` runs the same load against URL2 (the same model served with
batching off) and prints both results and their ratios.

The generator must never be what it measures. Over REST and v2 it sends pre-encoded bodies
with aiohttp (the SDK's httpx client used a whole core for ~300 requests/s, less than any
server it measured) and only reads the status and the body; ``--workers N`` splits the slots
over N processes, each with its own event loop, for when one client core is not enough.
The WebSocket load uses the SDK's WebSocket client (msgpack framing is cheap).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import numpy as np

from clients import protocol
from clients.connect import Protocol, add_connection_arguments, api_key_from, open_async_client
from clients.errors import MfqlClientError
from clients.http_client import RetryPolicy
from clients.latency import latency_summary_ms

NO_RETRIES = RetryPolicy(max_retries=0)


@dataclass(frozen=True)
class LoadSpec:
    """One load: where, what, how much."""

    url: str
    model: str | None
    protocol: Protocol = "rest"
    concurrency: int = 4
    duration: float = 10.0  # seconds: no request starts after this
    max_requests: int = 100_000
    batch: int = 1  # observations per request
    num_candidates: int | None = None
    rate: float | None = None  # requests/s (open loop); None: each slot resends at once
    timeout: float = 5.0
    api_key: str | None = None
    seed: int = 0  # synthetic observations
    workers: int = 1  # processes sharing the slots (and the rate and the request budget)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpSlot:
    """One in-flight REST or v2 request at a time over a shared aiohttp session: pre-encoded bodies."""

    def __init__(self, session, url: str, path: str, bodies: list[bytes], headers: dict[str, str]):
        self.session, self.url, self.bodies, self.headers = session, url + path, bodies, headers

    async def send(self, index: int) -> str | None:
        """None when answered with 200, else the status (or the error's name)."""
        async with self.session.post(
            self.url, data=self.bodies[index % len(self.bodies)], headers=self.headers
        ) as r:
            await r.read()
            return None if r.status == 200 else str(r.status)


class WebSocketSlot:
    def __init__(self, client, observations: np.ndarray, num_candidates: int | None):
        self.client, self.observations, self.num_candidates = client, observations, num_candidates

    async def send(self, index: int) -> str | None:
        await self.client.infer(self.observations[index % len(self.observations)], self.num_candidates)
        return None


def encoded_bodies(spec: LoadSpec, observations: np.ndarray) -> list[bytes]:
    if spec.protocol == "v2":
        return [json.dumps(protocol.v2_infer_body(o, spec.num_candidates)).encode() for o in observations]
    return [
        json.dumps(protocol.rest_act_body(o, single=False, num_candidates=spec.num_candidates)).encode()
        for o in observations
    ]


async def _send_load(spec: LoadSpec, slots: list, start_index: int) -> dict:
    """Drive ``slots`` until the duration or the request budget ends; raw latencies and errors."""
    idle: asyncio.Queue = asyncio.Queue()
    for slot in slots:
        idle.put_nowait(slot)
    latencies: list[float] = []
    errors: Counter = Counter()

    async def send(slot, index: int, started: float) -> None:
        try:
            status = await slot.send(index)
        except MfqlClientError as exc:
            status = str(exc.status) if exc.status is not None else type(exc).__name__
        except (OSError, asyncio.TimeoutError) as exc:
            status = type(exc).__name__
        finally:
            idle.put_nowait(slot)
        if status is None:
            latencies.append(time.perf_counter() - started)
        else:
            errors[status] += 1

    tasks = set()
    start = time.perf_counter()
    end = start + spec.duration
    sent = 0
    while sent < spec.max_requests:
        scheduled = None if spec.rate is None else start + sent / spec.rate
        if scheduled is not None:
            await asyncio.sleep(max(scheduled - time.perf_counter(), 0.0))
        slot = await idle.get()
        if time.perf_counter() >= end:
            idle.put_nowait(slot)
            break
        started = time.perf_counter() if scheduled is None else scheduled
        task = asyncio.create_task(send(slot, start_index + sent, started))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    await asyncio.gather(*tasks)
    return {
        "elapsed_s": time.perf_counter() - start,
        "requests": sent,
        "latencies": latencies,
        "errors": errors,
    }


async def _worker_load(spec: LoadSpec, obs_dim: int, start_index: int) -> dict:
    """One process's share: its own connections, the shared synthetic observations."""
    rng = np.random.default_rng(spec.seed)
    observations = rng.standard_normal((64, spec.batch, obs_dim)).astype(np.float32)
    if spec.protocol == "ws":
        options = {"api_key": spec.api_key, "timeout": spec.timeout, "retry": NO_RETRIES}
        clients = [
            await open_async_client(spec.url, spec.model, "ws", **options) for _ in range(spec.concurrency)
        ]
        try:
            return await _send_load(
                spec, [WebSocketSlot(c, observations, spec.num_candidates) for c in clients], start_index
            )
        finally:
            for client in clients:
                await client.aclose()
    import aiohttp  # the bench extra; imported here so the SDK never needs it

    headers = {"Content-Type": "application/json"}
    if spec.api_key:
        headers["Authorization"] = f"Bearer {spec.api_key}"
    path = protocol.v2_infer_path(spec.model) if spec.protocol == "v2" else protocol.rest_act_path(spec.model)
    connector = aiohttp.TCPConnector(limit=spec.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        bodies = encoded_bodies(spec, observations)
        slots = [
            HttpSlot(session, spec.url.rstrip("/"), path, bodies, headers) for _ in range(spec.concurrency)
        ]
        return await _send_load(spec, slots, start_index)


def _run_worker(spec: LoadSpec, obs_dim: int, start_index: int) -> dict:
    return asyncio.run(_worker_load(spec, obs_dim, start_index))


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def worker_specs(spec: LoadSpec) -> list[LoadSpec]:
    """``spec`` split over its workers: slots, rate and request budget shared out, none empty."""
    workers = min(spec.workers, spec.concurrency, spec.max_requests)
    rate = None if spec.rate is None else spec.rate / workers
    return [
        replace(
            spec,
            concurrency=_share(spec.concurrency, workers, i),
            max_requests=_share(spec.max_requests, workers, i),
            rate=rate,
            workers=1,
        )
        for i in range(workers)
    ]


async def run_load(spec: LoadSpec) -> dict:
    """Send the load described by ``spec``; throughput, latency percentiles, errors by status."""
    options = {"api_key": spec.api_key, "timeout": spec.timeout, "retry": NO_RETRIES}
    probe = await open_async_client(
        spec.url, spec.model, "rest" if spec.protocol == "ws" else spec.protocol, **options
    )
    try:
        metadata = await probe.metadata()
    finally:
        await probe.aclose()
    shares = worker_specs(spec)
    if len(shares) == 1:
        parts = [await _worker_load(shares[0], metadata.obs_dim, 0)]
    else:
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(len(shares)) as pool:
            runs = [
                loop.run_in_executor(pool, _run_worker, share, metadata.obs_dim, i * 1_000_003)
                for i, share in enumerate(shares)
            ]
            parts = await asyncio.gather(*runs)
    latencies = [t for part in parts for t in part["latencies"]]
    errors: Counter = sum((Counter(part["errors"]) for part in parts), Counter())
    elapsed = max(part["elapsed_s"] for part in parts)
    sent = sum(part["requests"] for part in parts)
    return {
        "url": spec.url,
        "model": metadata.name,
        "protocol": spec.protocol,
        "concurrency": spec.concurrency,
        "workers": len(shares),
        "rate": spec.rate,
        "batch": spec.batch,
        "num_candidates": spec.num_candidates,
        "elapsed_s": elapsed,
        "requests": sent,
        "ok": len(latencies),
        "errors": dict(sorted(errors.items())),
        "throughput_rps": len(latencies) / elapsed,
        "throughput_obs_per_s": len(latencies) * spec.batch / elapsed,
        "latency_ms": latency_summary_ms(latencies),
    }


def compare(batching: dict, no_batching: dict) -> dict:
    """Both runs and batching-on / batching-off ratios of throughput and latency."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    return {
        "batching": batching,
        "no_batching": no_batching,
        "throughput_ratio": ratio(batching["throughput_rps"], no_batching["throughput_rps"]),
        "latency_p50_ratio": ratio(batching["latency_ms"]["p50"], no_batching["latency_ms"]["p50"]),
        "latency_p99_ratio": ratio(batching["latency_ms"]["p99"], no_batching["latency_ms"]["p99"]),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfql-bench", description="Load an mfql server; print throughput, latency and errors as JSON."
    )
    add_connection_arguments(parser)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds; no request starts after this")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--rate", type=float, help="open loop: requests per second, whatever the answers")
    parser.add_argument("--batch", type=int, default=1, help="observations per request")
    parser.add_argument("--num-candidates", type=int, help="K for best-of-K (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic observations")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="client processes sharing the slots (when one core is not enough)",
    )
    parser.add_argument(
        "--compare-batching",
        metavar="URL2",
        help="also run the same load against URL2 (same model, batching off) and print the ratios",
    )
    parser.add_argument("--allow-remote", action="store_true", help="allow targets other than loopback")
    return parser


def _validate(args: argparse.Namespace) -> str | None:
    positive = {
        "--concurrency": args.concurrency,
        "--duration": args.duration,
        "--max-requests": args.max_requests,
        "--workers": args.workers,
    }
    positive.update(
        {"--batch": args.batch, "--num-candidates": args.num_candidates or 1, "--rate": args.rate or 1}
    )
    for flag, value in positive.items():
        if value <= 0:
            return f"{flag} must be > 0, got {value}"
    for url in filter(None, (args.url, args.compare_batching)):
        if not args.allow_remote and not is_loopback(url):
            return f"refusing to load {url}: not a loopback address (pass --allow-remote if it is yours)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _validate(args)
    if problem:
        print(f"mfql-bench: {problem}", file=sys.stderr)
        return 2
    spec = LoadSpec(
        url=args.url,
        model=args.model,
        protocol=args.protocol,
        concurrency=args.concurrency,
        duration=args.duration,
        max_requests=args.max_requests,
        batch=args.batch,
        num_candidates=args.num_candidates,
        rate=args.rate,
        timeout=args.timeout,
        api_key=api_key_from(args),
        seed=args.seed,
        workers=args.workers,
    )
    try:
        result = asyncio.run(run_load(spec))
        if args.compare_batching:
            other = asyncio.run(run_load(replace(spec, url=args.compare_batching)))
            result = compare(result, other)
    except (MfqlClientError, ValueError) as exc:
        print(f"mfql-bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
