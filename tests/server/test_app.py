"""The app in-process (FastAPI TestClient): error bodies, validation messages, limits, auth, metrics, docs."""

from __future__ import annotations

import json
import re
import time
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():  # starlette's import-time nudge towards httpx2; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from clients import codec
from server.app import create_app
from server.settings import ServerSettings

OBS = np.linspace(-1, 1, 28).tolist()
KEY = "s3cret-key"
JSON = {"Content-Type": "application/json"}


def started(settings: ServerSettings) -> TestClient:
    client = TestClient(create_app(settings))
    client.__enter__()
    deadline = time.monotonic() + 30
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/v1/models").json()
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def client(shared_repository):
    settings = ServerSettings(
        model_repository=shared_repository, max_batch_size=8, max_request_bytes=64 * 1024
    )
    client = started(settings)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def secured(shared_repository, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# operators\n{KEY}\nother-key\n")
    client = started(
        ServerSettings(model_repository=shared_repository, max_batch_size=8, api_key_file=key_file)
    )
    yield client
    client.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"observation": OBS[:-1]}, 422, r"observation: expected shape \[28\] or \[B, 28\] \(obs_dim=28\), got \[27\]"),
        ({"observations": [OBS, OBS[:3]]}, 422, "observations: expected numbers of shape"),
        ({"observation": [*OBS[:-1], float("nan")]}, 422, r"observation: contains NaN or inf \(first at index \[27\]\)"),
        ({"observation": OBS, "num_candidates": 9}, 422, r"num_candidates: must be in \[1, 8\] for model 'cube'"),
        ({"observation": OBS, "num_candidates": 0}, 422, "num_candidates: Input should be greater than or equal to 1"),
        ({"observation": OBS, "seed": -1}, 422, "seed: Input should be greater than or equal to 0"),
        ({"observation": OBS, "deadline_ms": 0}, 422, "deadline_ms: Input should be greater than 0"),
        ({"observation": OBS, "observations": [OBS]}, 422, "send exactly one of 'observation'"),
        ({"observation": OBS, "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        ({"observation": OBS, "version": "7"}, 404, r"model 'cube' has no version '7'; available versions: \['1', '2'\]"),
    ],
)  # fmt: skip
def test_rest_refusals_are_json_errors_naming_field_expected_and_received(client, body, status, message):
    # json.dumps writes NaN as the bare literal most JSON encoders (and Python's parser) accept
    response = client.post("/v1/models/cube/act", content=json.dumps(body), headers=JSON)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert re.search(message, response.json()["error"]), response.json()


def test_rest_answers_one_observation_and_a_batch(client):
    one = client.post("/v1/models/cube/act", json={"observation": OBS, "num_candidates": 4, "seed": 9}).json()
    many = client.post(
        "/v1/models/cube/act", json={"observations": [OBS, OBS], "seed": 9, "version": 1}
    ).json()
    assert len(one["action"]) == 5 and isinstance(one["q_value"], float)
    assert (one["num_candidates"], one["seed"], one["model"], one["version"]) == (4, 9, "cube", "2")
    assert set(one["timing_ms"]) == {"queue", "inference", "total"}
    assert np.asarray(many["actions"]).shape == (2, 5) and len(many["q_values"]) == 2
    assert (many["num_candidates"], many["version"]) == (1, "1")
    fresh = client.post("/v1/models/cube/act", json={"observation": OBS}).json()
    assert isinstance(fresh["seed"], int) and 0 <= fresh["seed"] < 2**53


def test_unknown_routes_and_methods_are_json_errors(client):
    assert client.get("/v1/nothing").json() == {"error": "Not Found"}
    assert client.get("/v1/models/cube/act").status_code == 405
    unreadable = client.post("/v1/models/cube/act", content=b"{oops")
    assert unreadable.status_code == 400 and unreadable.json()["error"].startswith("body is not JSON")


def test_body_over_the_limit_is_refused_with_413(client):
    big = {"observations": [OBS] * 400}
    response = client.post("/v1/models/cube/act", json=big)
    assert response.status_code == 413 and "exceeds the limit of 65536 bytes" in response.json()["error"]
    chunked = client.post("/v1/models/cube/act", content=iter([b'{"observations": [', b"1.0," * 20000]))
    assert chunked.status_code == 413


def test_metadata_listing_and_docs(client):
    listing = client.get("/v1/models").json()
    assert listing["default"] == "arm"
    assert {m["name"]: m["versions"] for m in listing["models"]} == {"arm": ["3"], "cube": ["1", "2"]}
    meta = client.get("/v1/models/cube").json()
    for key in ("obs_dim", "action_dim", "action_low", "action_high", "default_num_candidates",
                "max_num_candidates", "versions", "provider", "env_name", "success_rate",
                "training_step", "policy_type", "bundle_sha256"):  # fmt: skip
        assert key in meta
    assert client.get("/v1/models/cube/versions/1").json()["version"] == "1"
    assert client.get("/v1/models/cube?version=1").json()["version"] == "1"
    assert "/v1/models/{name}/act" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_websocket_error_frames_keep_the_connection_usable(client):
    with client.websocket_connect("/v1/models/cube/ws") as ws:
        metadata = codec.unpackb(ws.receive_bytes())
        assert (metadata["name"], metadata["obs_dim"], metadata["versions"]) == ("cube", 28, ["1", "2"])
        ws.send_bytes(codec.packb({"observation": np.zeros(3, np.float32)}))
        assert '"status": 422' in ws.receive_text()
        ws.send_text("hello")
        assert '"status": 400' in ws.receive_text()
        ws.send_bytes(b"\xc1")
        assert "malformed msgpack" in ws.receive_text()
        ws.send_bytes(codec.packb({"observation": np.zeros(28, np.float32), "seed": 3, "num_candidates": 2}))
        reply = codec.unpackb(ws.receive_bytes())
    assert reply["actions"].shape == (5,) and reply["q_values"].shape == ()
    assert (reply["seed"], reply["num_candidates"], reply["version"]) == (3, 2, "2")
    assert {"queue", "inference", "total", "infer_ms"} <= set(reply["server_timing"])


def test_metrics_count_requests_batches_and_models(client):
    client.post("/v1/models/cube/act", json={"observation": OBS, "num_candidates": 2})
    client.post("/v1/models/nope/act", json={"observation": OBS})
    text = client.get("/metrics").text
    assert 'mfql_requests_total{model="cube",protocol="rest",status="200"}' in text
    assert 'mfql_requests_total{model="unknown",protocol="rest",status="404"}' in text
    for name in ("mfql_request_duration_seconds_bucket", "mfql_queue_duration_seconds_bucket",
                 "mfql_inference_duration_seconds_bucket", "mfql_batch_size_bucket", "mfql_queue_depth",
                 "mfql_num_candidates_bucket", "mfql_chosen_q_value_count"):  # fmt: skip
        assert name + "{" in text
    assert "mfql_model_versions_loaded 3.0" in text and "mfql_model_versions_failed 0.0" in text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Basic {KEY}"}, 401),
        ({"Authorization": f"Bearer {KEY}"}, 200),
        ({"Authorization": "Api-Key other-key"}, 200),
    ],
)
def test_api_key_is_required_everywhere_but_health_and_metrics(secured, headers, status):
    response = secured.post("/v1/models/cube/act", json={"observation": OBS}, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"] in (
            "invalid API key",
            "missing API key: send 'Authorization: Bearer <key>' or 'Authorization: Api-Key <key>'",
        )
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert secured.get("/v1/models", headers=headers).status_code == status
    assert secured.get("/docs", headers=headers).status_code == status
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert secured.get(path).status_code == 200


@pytest.fixture(scope="module")
def chunked_client(chunked_repository):
    client = started(ServerSettings(model_repository=chunked_repository, max_batch_size=8))
    yield client
    client.__exit__(None, None, None)


def test_rest_answers_a_chunk_per_observation_from_a_chunked_model(chunked_client):
    one = chunked_client.post("/v1/models/chunks/act", json={"observation": OBS, "seed": 9}).json()
    many = chunked_client.post(
        "/v1/models/chunks/act", json={"observations": [OBS, OBS[::-1]], "seed": 9}
    ).json()
    assert np.asarray(one["action"]).shape == (5, 5) and isinstance(one["q_value"], float)
    assert np.asarray(many["actions"]).shape == (2, 5, 5) and len(many["q_values"]) == 2
    assert one["action_horizon"] == many["action_horizon"] == 5
    assert many["actions"][0] == one["action"]  # row 0 of the same seed draws the same chunk noise
    meta = chunked_client.get("/v1/models/chunks").json()
    assert (meta["action_dim"], meta["action_horizon"], meta["control_period_s"]) == (5, 5, 0.05)


def test_rest_answers_of_one_action_models_keep_their_shape_and_say_horizon_one(chunked_client):
    one = chunked_client.post("/v1/models/cube/act", json={"observation": OBS, "seed": 9}).json()
    assert np.asarray(one["action"]).shape == (5,) and one["action_horizon"] == 1
    meta = chunked_client.get("/v1/models/cube").json()
    assert (meta["action_horizon"], meta["control_period_s"]) == (1, None)
