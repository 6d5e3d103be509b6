"""mfql-bench: structure and counts of a short run, refusals of unsafe targets (never speed)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest

from clients.bench import LoadSpec, is_loopback, main, run_load, worker_specs
from tests.clients.live_server import CUBE, console_script

LATENCY_KEYS = {"count", "mean", "p50", "p90", "p99", "max"}


def _bench(*args: str) -> dict:
    command = [*console_script("mfql-bench", "clients.bench"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _assert_consistent(result: dict, max_requests: int) -> None:
    assert 0 < result["requests"] <= max_requests
    assert result["ok"] + sum(result["errors"].values()) == result["requests"]
    assert set(result["latency_ms"]) == LATENCY_KEYS and result["latency_ms"]["count"] == result["ok"]
    assert result["throughput_rps"] > 0


def test_bench_cli_prints_throughput_latency_and_errors(server_url):
    result = _bench(
        "--url",
        server_url,
        "--model",
        CUBE,
        "--concurrency",
        "2",
        "--duration",
        "1.5",
        "--max-requests",
        "200",
    )
    _assert_consistent(result, 200)
    assert result["errors"] == {} and result["ok"] == result["requests"]
    assert (result["concurrency"], result["batch"], result["protocol"]) == (2, 1, "rest")


@pytest.mark.parametrize("protocol", ["ws", "v2"])
async def test_bench_load_over_each_protocol_stops_at_max_requests(server_url, protocol):
    spec = LoadSpec(server_url, CUBE, protocol, concurrency=2, duration=30.0, max_requests=40, batch=3)
    result = await run_load(spec)
    _assert_consistent(result, 40)
    assert result["requests"] == 40 and result["ok"] == 40


async def test_open_loop_rate_sends_scheduled_requests(server_url):
    spec = LoadSpec(server_url, CUBE, concurrency=2, duration=30.0, max_requests=20, rate=200.0)
    result = await run_load(spec)
    assert result["rate"] == 200.0 and result["requests"] == 20
    _assert_consistent(result, 20)


def test_compare_batching_prints_both_runs_and_ratios(server_url):
    result = _bench(
        "--url", server_url, "--model", CUBE, "--compare-batching", server_url,
        "--concurrency", "2", "--duration", "0.5", "--max-requests", "50",
    )  # fmt: skip
    assert set(result) == {
        "batching",
        "no_batching",
        "throughput_ratio",
        "latency_p50_ratio",
        "latency_p99_ratio",
    }
    for run in (result["batching"], result["no_batching"]):
        _assert_consistent(run, 50)
    assert result["throughput_ratio"] > 0


def test_errors_are_counted_by_status(server_url):
    result = _bench(
        "--url",
        server_url,
        "--model",
        CUBE,
        "--num-candidates",
        "100000",
        "--duration",
        "5",
        "--max-requests",
        "5",
    )  # K over the model's limit: every request refused
    assert result["ok"] == 0 and result["requests"] == 5
    assert sum(result["errors"].values()) == 5 and set(result["errors"]) <= {"400", "422"}


def test_non_loopback_targets_are_refused_without_allow_remote(capsys):
    assert main(["--url", "http://192.0.2.1:8000", "--duration", "1"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:8000", "--compare-batching", "http://example.com"]) == 2


def test_loopback_detection():
    assert (
        is_loopback("http://127.0.0.1:8000")
        and is_loopback("ws://localhost")
        and is_loopback("http://[::1]:80")
    )
    assert not is_loopback("http://10.0.0.1:8000") and not is_loopback("http://example.com")


def test_bounds_must_be_positive(capsys):
    assert main(["--concurrency", "0"]) == 2
    assert "--concurrency must be > 0" in capsys.readouterr().err


def test_workers_share_slots_and_budget_and_their_counts_add_up(server_url):
    result = _bench(
        "--url", server_url, "--model", CUBE, "--concurrency", "3", "--workers", "2",
        "--duration", "30", "--max-requests", "41",
    )  # fmt: skip
    _assert_consistent(result, 41)
    assert (result["workers"], result["requests"], result["ok"]) == (2, 41, 41)


def test_worker_specs_split_concurrency_rate_and_requests_without_empty_workers():
    spec = LoadSpec("http://127.0.0.1:1", CUBE, concurrency=5, max_requests=7, rate=90.0, workers=4)
    shares = worker_specs(spec)
    assert [s.concurrency for s in shares] == [2, 1, 1, 1] and [s.max_requests for s in shares] == [
        2,
        2,
        2,
        1,
    ]
    assert all(s.rate == 22.5 and s.workers == 1 for s in shares)
    assert len(worker_specs(replace(spec, concurrency=1))) == 1
