"""Retries, timeouts and typed errors, against a scripted stub server (counts, never durations)."""

from __future__ import annotations

import contextlib
import socket

import numpy as np
import pytest

from clients import (
    AsyncPolicyClient,
    ConnectionFailed,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PolicyClient,
    RemotePolicy,
    RequestTimeout,
    RetryPolicy,
    ServerError,
    Unauthorized,
)
from tests.clients.stub_server import ACT_OK, Answer, StubServer

FAST_RETRY = RetryPolicy(max_retries=3, initial_backoff=0.001, max_backoff=0.5)
OVERLOADED = Answer(503, {"error": "queue full (64 waiting)"}, {"Retry-After": "0"})
OBSERVATION = [0.0, 1.0, 2.0]


@contextlib.contextmanager
def stub_client(*answers: Answer, **options):
    options.setdefault("retry", FAST_RETRY)
    with StubServer(list(answers)) as stub, PolicyClient(stub.url, "stub", **options) as client:
        yield stub, client


def test_retries_503_with_retry_after_then_returns_the_action():
    with stub_client(OVERLOADED, OVERLOADED, Answer()) as (stub, client):
        action = client.act(OBSERVATION)
    np.testing.assert_array_equal(action, np.float32(ACT_OK["action"]))
    assert len(stub.act_requests) == 3
    assert all(r.path == "/v1/models/stub/act" for r in stub.act_requests)


async def test_async_client_retries_503_then_returns_the_action():
    with StubServer([OVERLOADED, OVERLOADED, Answer()]) as stub:
        async with AsyncPolicyClient(stub.url, "stub", retry=FAST_RETRY) as client:
            action = await client.act(OBSERVATION)
    np.testing.assert_array_equal(action, np.float32(ACT_OK["action"]))
    assert len(stub.act_requests) == 3


def test_gives_up_after_max_retries_with_the_servers_message():
    with stub_client(OVERLOADED) as (stub, client), pytest.raises(Overloaded, match="queue full") as caught:
        client.act(OBSERVATION)
    assert len(stub.act_requests) == 1 + FAST_RETRY.max_retries
    assert caught.value.status == 503 and caught.value.retry_after == 0.0


def test_retry_after_longer_than_max_backoff_is_not_retried_early():
    answer = Answer(503, {"error": "draining"}, {"Retry-After": "30"})
    with stub_client(answer) as (stub, client), pytest.raises(Overloaded, match="draining"):
        client.act(OBSERVATION)
    assert len(stub.act_requests) == 1


def test_read_timeout_raises_request_timeout_without_retrying():
    with stub_client(Answer(delay=2.0)) as (stub, client), pytest.raises(RequestTimeout):
        client.act(OBSERVATION, timeout=0.2)
    assert len(stub.act_requests) == 1


def test_connection_refused_is_retried_then_raises_connection_failed():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with PolicyClient(f"http://127.0.0.1:{port}", "stub", retry=FAST_RETRY) as client:
        assert client.health() is False
        with pytest.raises(ConnectionFailed, match="not ready"):
            client.wait_until_ready(timeout=0.2)
        with pytest.raises(ConnectionFailed, match="cannot reach"):
            client.act(OBSERVATION)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": "observation: expected 3 values, got 4"}, InvalidInput),
        (422, {"detail": [{"loc": ["body", "num_candidates"], "msg": "must be <= 8"}]}, InvalidInput),
        (401, {"error": "invalid API key"}, Unauthorized),
        (404, {"error": "model 'nope' not found"}, ModelNotFound),
        (504, {"error": "deadline of 5 ms passed before inference"}, DeadlineExceeded),
        (500, {"error": "onnxruntime failed"}, ServerError),
    ],
)
def test_error_statuses_raise_typed_errors_carrying_the_servers_message(status, body, error):
    with stub_client(Answer(status, body)) as (stub, client), pytest.raises(error) as caught:
        client.act(OBSERVATION)
    assert caught.value.status == status
    expected = body.get("error") or "num_candidates: must be <= 8"
    assert caught.value.message == expected
    assert len(stub.act_requests) == 1


def test_api_key_is_sent_as_bearer_token_and_request_carries_options():
    with stub_client(Answer(), api_key="s3cret") as (stub, client):
        client.infer(OBSERVATION, num_candidates=4, seed=11, deadline_ms=20)
    (request,) = stub.act_requests
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.body == {"observation": OBSERVATION, "num_candidates": 4, "seed": 11, "deadline_ms": 20}


def test_bad_observations_are_refused_before_sending():
    with stub_client(Answer()) as (stub, client):
        with pytest.raises(InvalidInput, match="NaN"):
            client.act([0.0, float("nan"), 2.0])
        with pytest.raises(InvalidInput, match="one observation"):
            client.act([OBSERVATION])
        with pytest.raises(InvalidInput, match="batch"):
            client.act_batch(OBSERVATION)
    assert stub.act_requests == []


def test_remote_policy_refuses_wrong_dimension_before_sending():
    with stub_client(Answer()) as (stub, client):
        policy = RemotePolicy(client)
        with pytest.raises(InvalidInput, match=r"shape \(4,\) but model 'stub' expects obs_dim=3"):
            policy(np.zeros(4))
    assert stub.act_requests == []


def test_action_rate_guard_returns_last_action_and_counts_misses():
    with stub_client(Answer(), Answer(delay=2.0)) as (stub, client):
        policy = RemotePolicy(client, control_period=0.2)
        first = policy(np.zeros(3))
        late = policy(np.zeros(3))
        policy.reset()
        hold = policy(np.zeros(3))
    np.testing.assert_array_equal(first, np.float32(ACT_OK["action"]))
    np.testing.assert_array_equal(late, first)
    np.testing.assert_array_equal(hold, np.zeros(2, np.float32))  # middle of [-1, 1]
    assert (policy.steps, policy.misses) == (3, 2)
    assert stub.act_requests[0].body["deadline_ms"] == pytest.approx(200.0)
