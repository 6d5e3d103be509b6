"""WebSocketPolicyClient against a real mfql-serve, and its stale-reply handling against a stub."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import websockets.sync.server
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from clients import (
    AsyncWebSocketPolicyClient,
    InvalidInput,
    MfqlClientError,
    RemotePolicy,
    RequestTimeout,
    Unauthorized,
    WebSocketPolicyClient,
    codec,
)
from tests.clients.live_server import API_KEY, CUBE, CUBE_ACTION_DIM, CUBE_OBS_DIM

OBSERVATIONS = np.random.default_rng(1).standard_normal((3, CUBE_OBS_DIM)).astype(np.float32)


def test_connect_reads_metadata_then_acts(server_url):
    with WebSocketPolicyClient(server_url, CUBE) as client:
        metadata = client.metadata()
        action = client.act(OBSERVATIONS[0], num_candidates=4, seed=5)
        again = client.act(OBSERVATIONS[0], num_candidates=4, seed=5)
        actions = client.act_batch(OBSERVATIONS)
        assert client.health() is True
    assert (metadata.obs_dim, metadata.action_dim) == (CUBE_OBS_DIM, CUBE_ACTION_DIM)
    assert action.shape == (CUBE_ACTION_DIM,) and actions.shape == (3, CUBE_ACTION_DIM)
    np.testing.assert_array_equal(action, again)


def test_default_model_endpoint(server_url):
    with WebSocketPolicyClient(server_url) as client:
        assert client.metadata().obs_dim == CUBE_OBS_DIM
        assert client.act(OBSERVATIONS[0]).shape == (CUBE_ACTION_DIM,)


def test_error_frame_raises_and_connection_stays_usable(server_url):
    with WebSocketPolicyClient(server_url, CUBE) as client:
        with pytest.raises(MfqlClientError, match="observation"):
            client.act(np.zeros(CUBE_OBS_DIM + 2))
        assert client.act(OBSERVATIONS[0]).shape == (CUBE_ACTION_DIM,)


def test_remote_policy_over_websocket_refuses_wrong_dimension_before_sending(server_url):
    with WebSocketPolicyClient(server_url, CUBE) as client:
        policy = RemotePolicy(client, control_period=5.0)
        with pytest.raises(InvalidInput, match="nothing was sent"):
            policy(np.zeros(3))
        assert policy(OBSERVATIONS[0]).shape == (CUBE_ACTION_DIM,)
    assert (policy.steps, policy.misses) == (1, 0)


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_openpi_client_talks_to_our_endpoint(server_url):
    policy = WebsocketClientPolicy(server_url.replace("http://", "ws://") + f"/v1/models/{CUBE}/ws")
    assert policy.get_server_metadata()["obs_dim"] == CUBE_OBS_DIM
    reply = policy.infer({"observation": OBSERVATIONS[0]})
    assert np.asarray(reply["actions"]).reshape(-1).shape == (CUBE_ACTION_DIM,)
    assert "server_timing" in reply


def test_wrong_api_key_is_refused_and_right_key_accepted(secured_server_url):
    with pytest.raises(Unauthorized):
        WebSocketPolicyClient(secured_server_url, CUBE, api_key="wrong")
    with WebSocketPolicyClient(secured_server_url, CUBE, api_key=API_KEY) as client:
        assert client.act(OBSERVATIONS[0]).shape == (CUBE_ACTION_DIM,)


async def test_async_websocket_client(server_url):
    client = await AsyncWebSocketPolicyClient.open(server_url, CUBE)
    async with client:
        assert (await client.metadata()).action_dim == CUBE_ACTION_DIM
        assert (await client.act_batch(OBSERVATIONS)).shape == (3, CUBE_ACTION_DIM)


def _serve(handler):
    server = websockets.sync.server.serve(handler, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"ws://127.0.0.1:{server.socket.getsockname()[1]}"


def _echo_server(first_reply: threading.Event):
    """A WebSocket stub that answers each observation with its first elements as the action;
    the first answer waits until `first_reply` is set."""
    calls = []

    def handler(connection):
        connection.send(codec.packb({"name": "echo", "obs_dim": 3, "action_dim": 2}))
        for message in connection:
            request = codec.unpackb(message)
            calls.append(request)
            if len(calls) == 1:
                first_reply.wait(30)
            observation = np.asarray(request["observation"])
            connection.send(codec.packb({"actions": observation[:2], "q_values": np.zeros(1)}))

    return (*_serve(handler), calls)


def test_reply_to_a_timed_out_call_is_discarded_not_returned_for_the_next_one():
    first_reply = threading.Event()
    server, url, calls = _echo_server(first_reply)
    try:
        with WebSocketPolicyClient(url) as client:
            with pytest.raises(RequestTimeout):
                client.act([1.0, 1.0, 1.0], timeout=0.1)
            first_reply.set()  # the late answer arrives only now, after the client gave up
            action = client.act([2.0, 2.0, 2.0])
    finally:
        server.shutdown()
    np.testing.assert_array_equal(action, [2.0, 2.0])
    assert len(calls) == 2


def test_close_for_policy_violation_raises_unauthorized_with_the_reason():
    server, url = _serve(lambda connection: connection.close(1008, "invalid API key"))
    try:
        with pytest.raises(Unauthorized, match="invalid API key"):
            WebSocketPolicyClient(url, api_key="wrong")
    finally:
        server.shutdown()
