"""A real server under concurrent load: 64 clients are batched and each gets exactly the bundle's
answer for its own noise; a new version hot-swaps in while clients keep sending, with no failure."""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from server.noise import request_noise
from tests.server.bundles import reference_outputs, write_test_bundle
from tests.server.live import serving, wait_until

CLIENTS = 64


def test_64_concurrent_clients_are_batched_and_each_answer_is_the_bundle_on_its_noise(tmp_path):
    repository = tmp_path / "repository"
    bundle = write_test_bundle(repository / "cube" / "1", weights_seed=4)
    rng = np.random.default_rng(7)
    observations = rng.standard_normal((CLIENTS, 28)).astype(np.float32)
    candidates = [1 + i % 6 for i in range(CLIENTS)]  # mixed K in the same batches
    barrier = threading.Barrier(CLIENTS)

    def client(i: int) -> dict:
        with httpx.Client(timeout=30.0) as http:
            barrier.wait()  # everybody sends at once
            body = {
                "observation": observations[i].tolist(),
                "num_candidates": candidates[i],
                "seed": 1000 + i,
            }
            response = http.post(f"{server.url}/v1/models/cube/act", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    with serving(repository, "--max-queue-delay-us", "20000", "--max-batch-size", "256") as server:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(client, range(CLIENTS)))
        metrics = httpx.get(f"{server.url}/metrics").text

    for i, answer in enumerate(answers):
        noise = request_noise(1000 + i, 1, candidates[i], 5)
        expected = reference_outputs(bundle / "policy.onnx", observations[i : i + 1], noise)
        # Same noise, same graph; a different batch size may change float rounding, nothing more.
        np.testing.assert_allclose(answer["action"], expected["action"][0], rtol=0, atol=1e-5, err_msg=f"{i}")
        np.testing.assert_allclose(answer["q_value"], expected["q_value"][0], rtol=1e-6, atol=1e-5)
        assert answer["num_candidates"] == candidates[i]
    batches = float(re.search(r'mfql_batch_size_count\{model="cube"\} (\S+)', metrics)[1])
    rows = float(re.search(r'mfql_batch_size_sum\{model="cube"\} (\S+)', metrics)[1])
    assert rows == CLIENTS and batches < CLIENTS / 2, f"{CLIENTS} requests ran in {batches:.0f} batches"


def test_hot_reload_under_load_fails_no_request(tmp_path):
    repository = tmp_path / "repository"
    write_test_bundle(repository / "cube" / "1", weights_seed=1)
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(timeout=30.0) as http:
            while not stop.is_set():
                response = http.post(f"{url}/v1/models/cube/act", json={"observation": [0.1] * 28})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["version"])

    with serving(repository, "--repository-poll-s", "0.1") as server, ThreadPoolExecutor(8) as pool:
        workers = [pool.submit(client, server.url) for _ in range(8)]
        try:  # the clients stop whatever happens, or the pool would wait for them forever
            wait_until(lambda: len(statuses) > 50, message="load running")
            write_test_bundle(repository / "cube" / ".2.partial", weights_seed=2)
            os.rename(repository / "cube" / ".2.partial", repository / "cube" / "2")
            wait_until(lambda: "2" in versions, message="version 2 serving under load")
            count = len(statuses)
            wait_until(lambda: len(statuses) > count + 50, message="load continuing on version 2")
        finally:
            stop.set()
        for worker in workers:
            worker.result()
    assert versions == {"1", "2"}
    assert set(statuses) == {200}, f"non-200 answers during reload: {sorted(set(statuses))}"
