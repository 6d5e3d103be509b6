"""``mfql-bench``: a load generator for an mfql server, bounded in requests and in time.

Synthetic observations (no env feedback) go out over ``--concurrency`` in-flight slots:
by default each slot sends its next request as soon as the last one is answered; with
``--rate R`` arrivals are scheduled at R per second whatever the answers (open loop), and
latency counts from the scheduled time, so a stalled server cannot hide its queue
(coordinated omission). Nothing is retried: every refusal is counted by its status.
``--compare-batching URL2`` runs the same load against URL2 (the same model served with
batching off) and prints both results and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import numpy as np

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


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _open_slots(spec: LoadSpec) -> tuple[list, asyncio.Queue]:
    """The clients, and a queue of ``concurrency`` slots (a WebSocket slot owns its connection)."""
    options = {"api_key": spec.api_key, "timeout": spec.timeout, "retry": NO_RETRIES}
    if spec.protocol == "ws":
        clients = [
            await open_async_client(spec.url, spec.model, "ws", **options) for _ in range(spec.concurrency)
        ]
        slots = clients
    else:
        client = await open_async_client(
            spec.url, spec.model, spec.protocol, max_connections=spec.concurrency, **options
        )
        clients, slots = [client], [client] * spec.concurrency
    queue: asyncio.Queue = asyncio.Queue()
    for slot in slots:
        queue.put_nowait(slot)
    return clients, queue


async def run_load(spec: LoadSpec) -> dict:
    """Send the load described by ``spec``; throughput, latency percentiles, errors by status."""
    clients, slots = await _open_slots(spec)
    try:
        metadata = await clients[0].metadata()
        rng = np.random.default_rng(spec.seed)
        observations = rng.standard_normal((64, spec.batch, metadata.obs_dim)).astype(np.float32)
        latencies: list[float] = []
        errors: Counter = Counter()

        async def send(slot, observation, started: float) -> None:
            try:
                await slot.infer(observation, spec.num_candidates)
                latencies.append(time.perf_counter() - started)
            except MfqlClientError as exc:
                errors[str(exc.status) if exc.status is not None else type(exc).__name__] += 1
            finally:
                slots.put_nowait(slot)

        tasks = set()
        start = time.perf_counter()
        end = start + spec.duration
        sent = 0
        while sent < spec.max_requests:
            scheduled = None if spec.rate is None else start + sent / spec.rate
            if scheduled is not None:
                await asyncio.sleep(max(scheduled - time.perf_counter(), 0.0))
            slot = await slots.get()
            if time.perf_counter() >= end:
                slots.put_nowait(slot)
                break
            observation = observations[sent % len(observations)]
            started = time.perf_counter() if scheduled is None else scheduled
            task = asyncio.create_task(send(slot, observation, started))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            await client.aclose()
    return {
        "url": spec.url,
        "model": metadata.name,
        "protocol": spec.protocol,
        "concurrency": spec.concurrency,
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
