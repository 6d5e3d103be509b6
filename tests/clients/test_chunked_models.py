"""A chunked model (action horizon H > 1) served by a real mfql-serve, through every client.

The bundle is tiny_bundle's stand-in policy with H = CHUNK_HORIZON: one answer per
observation is a chunk [H, d]. RemotePolicy hands it out one action per control step.
"""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from clients import PolicyClient, RemotePolicy, WebSocketPolicyClient
from clients.rollout import main, make_env, run_episodes
from tests.clients.live_server import (
    CHUNK_HORIZON,
    CHUNKED,
    CUBE_ACTION_DIM,
    CUBE_ENV,
    CUBE_OBS_DIM,
    console_script,
)
from tests.clients.test_rollout import RecordingPolicy

H, D = CHUNK_HORIZON, CUBE_ACTION_DIM
OBSERVATIONS = np.random.default_rng(2).standard_normal((4, CUBE_OBS_DIM)).astype(np.float32)
pytestmark = [  # noise from building the MuJoCo env headless, not from the clients
    pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*DISPLAY environment variable is missing"),
]


@pytest.mark.parametrize("protocol", ["rest", "v2"])
def test_http_clients_read_the_horizon_and_return_chunks(chunked_server_url, protocol):
    with PolicyClient(chunked_server_url, CHUNKED, protocol=protocol) as client:
        metadata = client.metadata()
        chunk = client.act(OBSERVATIONS[0], num_candidates=4, seed=3)
        again = client.infer(OBSERVATIONS[0], num_candidates=4, seed=3)
        chunks = client.act_batch(OBSERVATIONS)
    assert (metadata.action_horizon, metadata.action_dim) == (H, D)
    assert chunk.shape == (H, D) and chunks.shape == (len(OBSERVATIONS), H, D)
    np.testing.assert_array_equal(again.chunks[0], chunk)  # the seed replays the whole chunk
    assert again.q_values.shape == (1,) and len({row.tobytes() for row in chunk}) > 1


def test_rest_metadata_carries_the_control_period(chunked_server_url):
    with PolicyClient(chunked_server_url, CHUNKED) as client:
        assert client.metadata().control_period_s == pytest.approx(0.05)


def test_websocket_client_returns_chunks_and_matches_rest_for_a_seed(chunked_server_url):
    with (
        WebSocketPolicyClient(chunked_server_url, CHUNKED) as ws,
        PolicyClient(chunked_server_url, CHUNKED) as rest,
    ):
        assert ws.metadata().action_horizon == H
        chunk = ws.act(OBSERVATIONS[1], num_candidates=4, seed=11)
        chunks = ws.act_batch(OBSERVATIONS)
        over_rest = rest.act(OBSERVATIONS[1], num_candidates=4, seed=11)
    assert chunk.shape == (H, D) and chunks.shape == (len(OBSERVATIONS), H, D)
    np.testing.assert_array_equal(chunk, over_rest)


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_openpi_action_chunk_broker_hands_out_the_chunk_our_client_receives(chunked_server_url):
    endpoint = chunked_server_url.replace("http://", "ws://") + f"/v1/models/{CHUNKED}/ws"
    broker = ActionChunkBroker(WebsocketClientPolicy(endpoint), action_horizon=H)
    observation = {"observation": OBSERVATIONS[2], "num_candidates": 4, "seed": 21}
    steps = [np.asarray(broker.infer(observation)["actions"]) for _ in range(H)]
    with WebSocketPolicyClient(chunked_server_url, CHUNKED) as client:
        chunk = client.act(OBSERVATIONS[2], num_candidates=4, seed=21)
    np.testing.assert_array_equal(np.stack(steps), chunk)


@pytest.mark.parametrize("transport", ["rest", "ws"])
def test_remote_policy_executes_each_served_chunk_one_action_per_step(chunked_server_url, transport):
    client_type = WebSocketPolicyClient if transport == "ws" else PolicyClient
    with client_type(chunked_server_url, CHUNKED) as client:
        policy = RemotePolicy(client, num_candidates=4)
        executed = [policy(OBSERVATIONS[step % 4], seed=100 + step) for step in range(2 * H)]
        # each chunk was asked for with the observation and seed of the step that asked
        first, second = (client.act(OBSERVATIONS[s % 4], num_candidates=4, seed=100 + s) for s in (0, H))
    np.testing.assert_array_equal(np.stack(executed), np.concatenate([first, second]))
    assert (policy.requests, policy.steps_from_chunk) == (2, 2 * H - 2)


def test_rollout_cli_runs_a_chunked_model_and_reports_requests_apart_from_chunk_steps(chunked_server_url):
    command = [*console_script("mfql-rollout", "clients.rollout"), "--url", chunked_server_url]
    arguments = [
        "--model",
        CHUNKED,
        "--env",
        CUBE_ENV,
        "--episodes",
        "2",
        "--seed",
        "0",
        "--replan-every",
        "2",
    ]
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["action_horizon"], report["replan_every"], report["misses"]) == (H, 2, 0)
    # both episodes run to the time limit (the stand-in never succeeds): a request every 2 steps
    assert report["success_rate"] == 0.0
    length = report["mean_episode_length"]
    assert report["requests"] == 2 * math.ceil(length / 2) == report["request_latency_ms"]["count"]
    assert (
        report["steps_from_chunk"]
        == report["steps"] - report["requests"]
        == report["step_latency_ms"]["count"]
    )
    assert report["control_latency_ms"]["count"] == report["steps"] == round(2 * length)


def test_rollout_refuses_replan_every_beyond_the_models_horizon(chunked_server_url, capsys):
    arguments = [
        "--url",
        chunked_server_url,
        "--model",
        CHUNKED,
        "--env",
        CUBE_ENV,
        "--replan-every",
        str(H + 1),
    ]
    assert main(arguments) == 2
    assert f"action horizon {H}; got {H + 1}" in capsys.readouterr().err


def test_chunked_rollout_is_reproducible_and_identical_over_rest_and_websocket(chunked_server_url):
    env = make_env(CUBE_ENV)
    try:
        reports = []
        for client_type in (PolicyClient, WebSocketPolicyClient):
            with client_type(chunked_server_url, CHUNKED) as client:
                policy = RecordingPolicy(client, num_candidates=2)
                reports.append((run_episodes(policy, env, episodes=1, seed=7), policy.record))
    finally:
        env.close()
    (over_rest, rest_record), (over_ws, ws_record) = reports
    assert over_rest["requests"] == math.ceil(over_rest["steps"] / H) == over_ws["requests"]
    assert [seed for seed, _ in rest_record] == [seed for seed, _ in ws_record]
    assert all(a.tobytes() == b.tobytes() for (_, a), (_, b) in zip(rest_record, ws_record, strict=True))
    assert over_rest["mean_return"] == over_ws["mean_return"]
