"""A real server's life: hot reload while serving, back-pressure (503), deadlines (504), SIGTERM drain."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.server.bundles import write_test_bundle
from tests.server.live import serving, wait_until

BODY = {"observation": [0.25] * 28, "seed": 1}


def act(url: str, **options) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/cube/act", json={**BODY, **options}, timeout=30.0)


def queue_depth(url: str) -> float:
    """Observations waiting in cube/1's queue, from the server's own gauge."""
    found = re.search(r'mfql_queue_depth\{model="cube",version="1"\} (\S+)', httpx.get(f"{url}/metrics").text)
    return float(found[1]) if found else 0.0


def test_hot_reload_serves_a_copied_in_version_and_never_a_broken_one(tmp_path):
    repository = tmp_path / "repository"
    write_test_bundle(repository / "cube" / "1", weights_seed=1)
    with serving(repository, "--repository-poll-s", "0.2") as server:
        assert act(server.url).json()["version"] == "1"
        # publish the way the docs say: write a hidden directory, then rename it into place
        write_test_bundle(repository / "cube" / ".2.partial", weights_seed=2)
        os.rename(repository / "cube" / ".2.partial", repository / "cube" / "2")
        wait_until(lambda: act(server.url).json()["version"] == "2", message="version 2 serving")
        broken = write_test_bundle(repository / "cube" / "3", weights_seed=3)
        (broken / "metadata.json").write_text("{}")
        report = httpx.post(f"{server.url}/v1/repository/reload").json()
        assert report["failed"] == ["cube/3"]
        listing = httpx.get(f"{server.url}/v1/models").json()["models"][0]
        assert listing["versions"] == ["1", "2"] and listing["failed"][0]["version"] == "3"
        assert "SHA-256" in listing["failed"][0]["error"]
        assert act(server.url).json()["version"] == "2"
        shutil.rmtree(repository / "cube" / "2")
        wait_until(lambda: act(server.url).json()["version"] == "1", message="fallback to version 1")
        assert act(server.url, version="2").status_code == 404


def triton_infer_with_timeout(hostport: str, timeout_us: int):
    """tritonclient's `timeout=` (microseconds) reaches the server as the request's deadline."""
    client = triton.InferenceServerClient(url=hostport, network_timeout=30.0)
    observation = triton.InferInput("observation", [1, 28], "FP32")
    observation.set_data_from_numpy(np.zeros((1, 28), np.float32))
    try:
        client.infer("cube", [observation], timeout=timeout_us)
    except InferenceServerException as refused:
        return refused.status(), refused.message()
    finally:
        client.close()
    return "200", ""


def test_full_queue_answers_503_with_retry_after_and_late_requests_504(tmp_path):
    repository = tmp_path / "repository"
    write_test_bundle(repository / "cube" / "1")
    # every batch waits 5 s for company (the optional cap), so requests pile up in the queue of 5
    # observations, even when a loaded machine is slow to send them
    with serving(repository, "--max-queue-delay-us", "5000000", "--max-queue-size", "5") as server:
        with ThreadPoolExecutor(8) as pool:
            queued = [pool.submit(act, server.url) for _ in range(3)]
            late = pool.submit(act, server.url, deadline_ms=100)
            late_v2 = pool.submit(triton_infer_with_timeout, server.hostport, 100_000)
            wait_until(lambda: queue_depth(server.url) == 5, message="5 observations queued")
            overflow = act(server.url)
            assert overflow.status_code == 503 and overflow.headers["Retry-After"] == "1"
            assert "queue of cube/1 is full" in overflow.json()["error"]
            assert [f.result().status_code for f in queued] == [200, 200, 200]
            refused = late.result()
            v2_status, v2_message = late_v2.result()
        assert refused.status_code == 504 and "dropped without computing" in refused.json()["error"]
        assert v2_status == "504" and "deadline passed" in v2_message


def test_sigterm_turns_readiness_off_finishes_queued_requests_then_exits(tmp_path):
    repository = tmp_path / "repository"
    write_test_bundle(repository / "cube" / "1")
    with serving(repository, "--max-queue-delay-us", "5000000") as server:
        with ThreadPoolExecutor(4) as pool:
            in_flight = [pool.submit(act, server.url, seed=s) for s in range(4)]
            wait_until(lambda: queue_depth(server.url) == 4, message="all four queued")
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 503, 5.0,
                       message="readiness 503")  # fmt: skip
            refused = act(server.url)
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
            assert [f.result().status_code for f in in_flight] == [200] * 4
        assert server.process.wait(timeout=20) == 0
    log = server.log.read_text()
    assert '"msg": "draining before shutdown"' in log and '"signal": "SIGTERM"' in log


def test_a_second_signal_stops_without_waiting_for_the_queue(tmp_path):
    repository = tmp_path / "repository"
    write_test_bundle(repository / "cube" / "1")
    options = ("--max-queue-delay-us", "20000000", "--drain-timeout-s", "60")
    with serving(repository, *options) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(act, server.url)
        wait_until(lambda: queue_depth(server.url) == 1, message="the request queued")
        server.process.send_signal(signal.SIGINT)
        wait_until(lambda: "draining before shutdown" in server.log_text(), message="drain started")
        stopping = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - stopping < 10  # not the 20 s queue delay, nor the 60 s drain
        assert pending.result().status_code == 503  # refused, not left to time out
