"""Serving options and guarantees on a real server: replaying a server-chosen seed, distinct seeds,
the default deadline, the WebSocket message cap, the latency target, quiet connection logs."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosedError

from clients import codec
from tests.server.bundles import write_test_bundle
from tests.server.live import serving, wait_until

OBSERVATION = np.random.default_rng(5).standard_normal(28).astype(np.float32)


@pytest.fixture(scope="module")
def small_messages(shared_repository):
    with serving(shared_repository, "--max-request-bytes", "4096") as server:
        yield server


def act(url: str, **options) -> dict:
    response = httpx.post(f"{url}/v1/models/cube/act", json={"observation": OBSERVATION.tolist(), **options})
    assert response.status_code == 200, response.text
    return response.json()


@contextlib.contextmanager
def socket(server, path: str = "/v1/models/cube/ws") -> Iterator:
    with websockets.sync.client.connect(server.ws_url + path, compression=None) as ws:
        ws.recv()  # the metadata sent on connect
        yield ws


def test_a_server_chosen_seed_replays_the_same_action_over_rest_and_websocket(small_messages):
    chosen = act(small_messages.url, num_candidates=8)
    replayed = act(small_messages.url, num_candidates=8, seed=chosen["seed"])
    assert np.float32(replayed["action"]).tobytes() == np.float32(chosen["action"]).tobytes()
    assert replayed["q_value"] == chosen["q_value"]
    with socket(small_messages) as ws:
        ws.send(codec.packb({"observation": OBSERVATION, "num_candidates": 8, "seed": chosen["seed"]}))
        over_ws = codec.unpackb(ws.recv())
    assert over_ws["actions"].tobytes() == np.float32(chosen["action"]).tobytes()
    assert act(small_messages.url)["seed"] != chosen["seed"]  # each unseeded request gets its own


def test_different_seeds_give_different_candidates_and_the_same_seed_the_same(small_messages):
    def candidates(seed: int) -> np.ndarray:
        body = {
            "inputs": [
                {"name": "observation", "shape": [1, 28], "datatype": "FP32", "data": OBSERVATION.tolist()}
            ],
            "outputs": [{"name": "candidates"}],
            "parameters": {"seed": seed, "num_candidates": 4},
        }
        answer = httpx.post(f"{small_messages.url}/v2/models/cube/infer", json=body).json()
        return np.float32(answer["outputs"][0]["data"]).reshape(4, 5)

    first, second, again = candidates(1), candidates(2), candidates(1)
    assert first.tobytes() == again.tobytes()
    assert not np.any(np.all(first == second, axis=1))  # no candidate shared between the two seeds
    assert len({row.tobytes() for row in first}) == 4  # and the K candidates of one request differ


def test_websocket_messages_over_the_size_cap_close_the_connection(small_messages):
    with socket(small_messages) as ws:
        ws.send(codec.packb({"observation": OBSERVATION}))  # well under 4096 bytes
        assert isinstance(ws.recv(), bytes)
        ws.send(codec.packb({"observation": np.zeros(2048, np.float32)}))  # 8 kB
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv()
    assert closed.value.rcvd.code == 1009  # "message too big"


def test_websocket_connections_log_nothing_at_the_default_level(small_messages):
    with socket(small_messages) as ws:
        ws.send(codec.packb({"observation": OBSERVATION}))
        ws.recv()
    act(small_messages.url)  # a request after the close: its log lines, if any, came first
    log = small_messages.log_text()
    assert "connection open" not in log and '"WebSocket ' not in log and "connection closed" not in log


def test_requests_without_a_deadline_get_the_default_one(shared_repository):
    # a batch waits up to 1 s for company, far past the 50 ms default deadline
    options = ("--default-deadline-ms", "50", "--max-queue-delay-us", "1000000")
    with serving(shared_repository, *options) as server, ThreadPoolExecutor(2) as pool:
        body = {"observation": OBSERVATION.tolist(), "seed": 1}

        def post(extra: dict) -> httpx.Response:
            return httpx.post(f"{server.url}/v1/models/cube/act", json={**body, **extra}, timeout=30)

        defaulted, own = pool.submit(post, {}), pool.submit(post, {"deadline_ms": 30_000})
        assert own.result().status_code == 200
        refused = defaulted.result()
    assert refused.status_code == 504 and "dropped without computing" in refused.json()["error"]


def reductions(url: str) -> float:
    found = re.search(
        r'mfql_num_candidates_reduced_total\{model="cube"\} (\S+)', httpx.get(f"{url}/metrics").text
    )
    return float(found[1]) if found else 0.0


def test_latency_target_lowers_k_only_for_requests_that_did_not_name_it(tmp_path):
    repository = tmp_path / "repository"
    write_test_bundle(repository / "cube" / "1", metadata={"default_num_candidates": 4})
    with serving(repository) as server:
        assert act(server.url)["num_candidates"] == 4  # no target: the model's default
    # a target no inference can meet: K goes down to 1, and the answer says so
    with serving(repository, "--latency-target-ms", "0.0001", "--log-level", "debug") as server:
        assert [act(server.url)["num_candidates"] for _ in range(3)] == [1, 1, 1]
        assert act(server.url, num_candidates=4)["num_candidates"] == 4  # a named K is kept
        assert reductions(server.url) == 3
        with socket(server):  # and at debug level the per-connection lines are there
            wait_until(lambda: "connection open" in server.log_text(), message="connection logged")
