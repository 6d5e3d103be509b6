"""Sessions, hand-overs, action limits, clock echo and recording, through the app in-process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from clients import codec
from server.noise import request_noise
from server.settings import ServerSettings
from tests.server.bundles import reference_outputs, write_test_bundle
from tests.server.conftest import CHUNK_HORIZON
from tests.server.live import ROOT
from tests.server.test_app import started

H, D = CHUNK_HORIZON, 5
OBS = np.random.default_rng(3).standard_normal((8, 28)).astype(np.float32)
DELTA = 0.05


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """chunks (H = 5, 20 Hz, two versions), cube (H = 1) and limited (H = 1 with a max change per step)."""
    root = tmp_path_factory.mktemp("control") / "repository"
    for version in (1, 2):
        write_test_bundle(
            root / "chunks" / str(version),
            "chunks",
            weights_seed=version,
            action_horizon=H,
            control_period_s=0.05,
        )
    write_test_bundle(root / "cube" / "1", weights_seed=1)
    write_test_bundle(root / "limited" / "1", "limited", metadata={"max_action_delta": [DELTA] * D})
    return root


@pytest.fixture(scope="module")
def client(repository, tmp_path_factory):
    record_dir = tmp_path_factory.mktemp("records")
    settings = ServerSettings(
        model_repository=repository,
        max_sessions=4,
        session_idle_s=30,
        record_dir=record_dir,
        max_batch_size=8,
    )
    client = started(settings)
    client.record_dir = record_dir
    yield client
    client.__exit__(None, None, None)


def act(client, model="chunks", status=200, **body):
    body.setdefault("observation", OBS[0].tolist())
    response = client.post(f"/v1/models/{model}/act", json=body)
    assert response.status_code == status, response.text
    return response.json()


def metric(client, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", client.get("/metrics").text, re.M)
    return float(found[1]) if found else 0.0


def test_a_rest_session_is_created_on_first_use_counts_steps_and_resets(client):
    first = act(client, session_id="robot-a")
    second = act(client, session_id="robot-a", observation=OBS[1].tolist())
    assert (first["session_id"], first["episode"], first["step"]) == ("robot-a", 0, 0)
    assert (second["episode"], second["step"]) == (0, 1)
    assert first["seed"] != second["seed"]  # the session's seed stream
    resets = metric(client, "mfql_session_resets_total")
    again = act(client, session_id="robot-a", reset=True)
    assert (again["episode"], again["step"]) == (1, 0)
    assert metric(client, "mfql_session_resets_total") == resets + 1
    state = client.get("/v1/sessions/robot-a").json()
    assert (state["episode"], state["step"]) == (1, 1)
    assert client.delete("/v1/sessions/robot-a").status_code == 200
    assert client.get("/v1/sessions/robot-a").status_code == 404


def test_a_sessions_seed_stream_replays_from_its_base_seed(client):
    seeds = []
    for _ in range(2):
        client.post("/v1/sessions", json={"session_id": "replayed", "seed": 99})
        seeds.append([act(client, session_id="replayed")["seed"] for _ in range(3)])
    client.delete("/v1/sessions/replayed")
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 3


def test_sessions_are_isolated_and_one_sessions_error_leaves_the_other_alone(client):
    act(client, session_id="iso-1")
    act(client, session_id="iso-2")
    bad = client.post(
        "/v1/models/chunks/act", json={"observation": OBS[0].tolist()[:-1], "session_id": "iso-1"}
    )
    assert bad.status_code == 422
    assert act(client, session_id="iso-2")["step"] == 1
    assert act(client, session_id="iso-1")["step"] == 1  # the refused request served no step
    for name in ("iso-1", "iso-2"):
        client.delete(f"/v1/sessions/{name}")


def test_a_full_server_refuses_a_new_session_with_503_and_retry_after(client):
    refused = metric(client, "mfql_sessions_refused_total")
    for index in range(4):
        act(client, session_id=f"full-{index}")
    assert metric(client, "mfql_sessions_active") == 4
    response = client.post(
        "/v1/models/chunks/act", json={"observation": OBS[0].tolist(), "session_id": "one-more"}
    )
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    assert "--max-sessions" in response.json()["error"]
    assert metric(client, "mfql_sessions_refused_total") == refused + 1
    assert act(client)["action_horizon"] == H  # a request without a session is still served
    for index in range(4):
        client.delete(f"/v1/sessions/full-{index}")
    assert metric(client, "mfql_sessions_active") == 0


def test_idle_sessions_expire(repository):
    client = started(ServerSettings(model_repository=repository, session_idle_s=0.2))
    try:
        act(client, session_id="sleepy")
        time.sleep(0.5)
        assert client.get("/v1/sessions/sleepy").status_code == 404
        assert metric(client, 'mfql_sessions_ended_total{reason="expired"}') == 1
        assert metric(client, "mfql_sessions_active") == 0
    finally:
        client.__exit__(None, None, None)


def test_without_control_values_a_session_answers_what_a_stateless_request_does(client):
    stateless = act(client, seed=5, num_candidates=6)
    in_session = act(client, seed=5, num_candidates=6, session_id="plain")
    assert in_session["action"] == stateless["action"] and in_session["q_value"] == stateless["q_value"]
    client.delete("/v1/sessions/plain")


def candidates_and_q(repository, observation, seed, k, version=2):
    """Every candidate and its Q from the bundle's own graph (one K = 1 row per candidate)."""
    noise = request_noise(seed, 1, k, (H, D)).reshape(k, 1, H, D)
    graph = repository / "chunks" / str(version) / "policy.onnx"
    out = reference_outputs(graph, np.repeat(observation[None], k, axis=0), noise)
    return out["candidates"][:, 0], out["q_value"]


def test_the_hand_over_picks_the_candidate_by_q_minus_lambda_times_distance(client, repository):
    rest = np.full((3, D), 0.3, np.float32)  # s = 2 steps of the previous chunk were executed
    answer = act(
        client, seed=11, num_candidates=8, previous_chunk=rest.tolist(), handover_weight=1000.0, delay_steps=1
    )
    candidates, q = candidates_and_q(repository, OBS[0], 11, 8)
    distance = np.abs(candidates[:, 1:3] - rest[1:3]).mean(axis=(1, 2))
    expected = int(np.argmax(q - 1000.0 * distance))
    assert answer["handover"]["candidate"] == expected and answer["handover"]["delay_steps"] == 1
    assert np.allclose(answer["action"], candidates[expected], atol=1e-6)
    plain = act(client, seed=11, num_candidates=8, previous_chunk=rest.tolist())  # lambda 0: off
    assert np.allclose(plain["action"], candidates[int(np.argmax(q))], atol=1e-6) and "handover" not in plain


def test_a_spread_scaled_hand_over_weighs_distance_against_the_candidates_q_range(client, repository):
    rest = np.full((3, D), 0.3, np.float32)
    answer = act(
        client, seed=11, num_candidates=8, previous_chunk=rest.tolist(), handover_weight=3.0,
        handover_scale="spread", delay_steps=1,
    )  # fmt: skip
    candidates, q = candidates_and_q(repository, OBS[0], 11, 8)
    distance = np.abs(candidates[:, 1:3] - rest[1:3]).mean(axis=(1, 2))
    spread = q.max() - q.min()
    expected = int(np.argmax(q - 3.0 * spread * distance))
    assert answer["handover"]["candidate"] == expected
    assert answer["handover"]["q_spread"] == pytest.approx(spread, rel=1e-5)
    assert np.allclose(answer["action"], candidates[expected], atol=1e-6)
    # a session keeps the scale it started with; a bad scale is a 422 naming the choices
    first = act(
        client,
        session_id="spread",
        handover_weight=3.0,
        handover_scale="spread",
        execute_steps=2,
        delay_steps=1,
    )
    second = act(client, session_id="spread", observation=OBS[1].tolist(), num_candidates=8)
    rest = np.asarray(first["action"])[2:]
    candidates, q = candidates_and_q(repository, OBS[1], second["seed"], 8)
    distance = np.abs(candidates[:, 1:3] - rest[1:3]).mean(axis=(1, 2))
    assert second["handover"]["candidate"] == int(np.argmax(q - 3.0 * (q.max() - q.min()) * distance))
    client.delete("/v1/sessions/spread")
    error = act(client, status=422, handover_scale="Q")["error"]
    assert "handover_scale" in error and "spread" in error


def test_choose_is_scale_free_with_spread_units_only():
    from server.handover import choose

    rng = np.random.default_rng(0)
    for _ in range(50):
        q, distance = rng.normal(size=16), rng.uniform(0, 0.5, size=16)
        weight = rng.uniform(0.1, 10)
        spread_choice = choose(q, distance, weight, "spread")
        assert spread_choice == int(np.argmax(q - weight * (q.max() - q.min()) * distance))
        for factor, shift in ((100.0, -50.0), (0.01, 3.0)):  # another reward scale: the same choice
            assert choose(factor * q + shift, distance, weight, "spread") == spread_choice
    q, distance = np.array([0.0, 1.0, 0.5]), np.array([0.2, 0.4, 0.1])
    # in units of Q the same lambda flips with the reward's scale: 1 - 0.4 w against 0.5 - 0.1 w
    assert (choose(q, distance, 1.0), choose(100 * q, distance, 1.0)) == (1, 1)
    assert (choose(q, distance, 3.0), choose(100 * q, distance, 3.0)) == (2, 1)
    # equal Q everywhere: the distance alone decides, and weight 0 keeps the first (the graph's argmax)
    assert (
        choose(np.ones(3), distance, 1.0, "spread") == 2 and choose(np.ones(3), distance, 0.0, "spread") == 0
    )


def test_pinning_copies_the_first_d_steps_of_the_rest_into_the_answer(client):
    rest = np.linspace(-0.5, 0.5, 4 * D, dtype=np.float32).reshape(4, D)
    answer = act(client, previous_chunk=rest.tolist(), pin_delay=True, delay_steps=2)
    assert np.allclose(np.asarray(answer["action"])[:2], rest[:2])


def test_a_session_hands_over_from_its_own_last_chunk(client):
    first = act(client, session_id="smooth", handover_weight=1e6, execute_steps=2, delay_steps=0)
    second = act(client, session_id="smooth", observation=OBS[1].tolist(), num_candidates=8)
    assert "handover" not in first and second["handover"]["execute_steps"] == 2
    rest = np.asarray(first["action"])[2:]
    unguided = act(client, observation=OBS[1].tolist(), num_candidates=8, seed=second["seed"])
    guided_jump = np.abs(np.asarray(second["action"])[: len(rest)] - rest).mean()
    unguided_jump = np.abs(np.asarray(unguided["action"])[: len(rest)] - rest).mean()
    assert guided_jump <= unguided_jump
    client.delete("/v1/sessions/smooth")


def test_a_bundles_max_action_delta_holds_each_step_and_the_answer_says_it_clamped(client):
    first = act(client, "limited", session_id="arm")
    second = act(client, "limited", session_id="arm", observation=(-OBS[0]).tolist())
    change = np.abs(np.asarray(second["action"]) - np.asarray(first["action"]))
    assert (change <= DELTA + 1e-6).all()
    assert second["action_clamped"] is True and second["clamped_steps"]["rate"] == 1
    assert metric(client, 'mfql_actions_clamped_total{limit="rate",model="limited"}') >= 1
    assert client.get("/v1/models/limited").json()["max_action_delta"] == [DELTA] * D
    client.delete("/v1/sessions/arm")


def test_session_bounds_narrow_the_models_and_bad_limits_get_422(client):
    answer = act(client, action_low=-0.1, action_high=0.1)
    assert (np.abs(answer["action"]) <= 0.1 + 1e-7).all() and answer["action_clamped"] is True
    within_chunk = act(client, max_action_delta=0.01)
    assert (np.abs(np.diff(within_chunk["action"], axis=0)) <= 0.01 + 1e-6).all()
    assert (
        "action_low exceeds action_high" in act(client, status=422, action_low=0.5, action_high=0.1)["error"]
    )
    assert "action_low" in act(client, status=422, action_low=[0.1, 0.2])["error"]
    assert "max_action_delta" in act(client, status=422, max_action_delta=0)["error"]
    assert "previous_chunk" in act(client, status=422, previous_chunk=[[0.1] * 4])["error"]
    assert "reset" in act(client, status=422, reset=True)["error"]
    assert "session_id" in act(client, status=422, session_id="bad id!")["error"]
    batch = client.post("/v1/models/chunks/act", json={"observations": OBS[:2].tolist(), "session_id": "b"})
    assert batch.status_code == 422 and "one 'observation'" in batch.json()["error"]


def test_the_clock_echo_returns_the_clients_time_and_step_with_the_servers(client):
    before = time.time()
    answer = act(client, client_time=123.5, client_step=7)
    clock = answer["clock"]
    assert (clock["client_time"], clock["client_step"]) == (123.5, 7)
    assert before <= clock["server_received"] <= clock["server_sent"] <= time.time()


def test_v2_sequences_are_sessions_with_start_and_end(client):
    def infer(**parameters):
        body = {
            "inputs": [
                {"name": "observation", "shape": [1, 28], "datatype": "FP32", "data": OBS[0].tolist()}
            ],
            "parameters": parameters,
        }
        response = client.post("/v2/models/chunks/infer", json=body)
        assert response.status_code == 200, response.text
        return response.json()["parameters"]

    first = infer(sequence_id=42, sequence_start=True, client_step=3)
    second = infer(sequence_id=42)
    assert (first["sequence_id"], first["step"], second["step"]) == (42, 0, 1)
    assert first["clock_client_step"] == 3 and "clock_server_sent" in first
    restarted = infer(sequence_id=42, sequence_start=True)
    assert (restarted["episode"], restarted["step"]) == (1, 0)
    infer(sequence_id=42, sequence_end=True)
    assert infer(sequence_id=42)["episode"] == 0  # ended: the next use opens a new session
    infer(sequence_id=42, sequence_end=True)
    bad = client.post(
        "/v2/models/chunks/infer",
        json={
            "inputs": [
                {"name": "observation", "shape": [1, 28], "datatype": "FP32", "data": OBS[0].tolist()}
            ],
            "parameters": {"sequence_start": True},
        },
    )
    assert bad.status_code == 422 and "sequence_id" in bad.json()["error"]


def test_a_websocket_connection_is_a_session_with_a_reset_message(client):
    with client.websocket_connect("/v1/models/chunks/ws") as socket:
        socket.receive_bytes()  # metadata
        steps = []
        for _ in range(2):
            socket.send_bytes(codec.packb({"observation": OBS[0]}))
            steps.append(codec.unpackb(socket.receive_bytes())["step"])
        socket.send_bytes(codec.packb({"reset": True, "handover_weight": 2.0, "handover_scale": "spread"}))
        reset = codec.unpackb(socket.receive_bytes())
        socket.send_bytes(codec.packb({"observation": OBS[0], "client_time": 1.0}))
        after = codec.unpackb(socket.receive_bytes())
        socket.send_bytes(codec.packb({"reset": "yes"}))
        error = json.loads(socket.receive_text())
        assert metric(client, "mfql_sessions_active") >= 1
    assert steps == [0, 1] and reset["reset"] is True and reset["episode"] == 1
    assert (after["episode"], after["step"], after["clock"]["client_time"]) == (1, 0, 1.0)
    assert error["status"] == 422


def test_recording_writes_one_flushed_file_per_episode_and_replay_compares_versions(client, repository):
    for index in range(3):
        act(client, session_id="recorded", observation=OBS[index].tolist(), num_candidates=4, client_time=1.5)
    act(client, session_id="recorded", reset=True)
    folder = client.record_dir / "rest-recorded"
    files = sorted(folder.glob("*.jsonl"))
    assert [f.name for f in files] == ["episode_000000.jsonl", "episode_000001.jsonl"]
    steps = [json.loads(line) for line in files[0].read_text().splitlines()]  # flushed: readable while open
    assert [s["frame_index"] for s in steps] == [0, 1, 2]
    first = steps[0]
    assert np.asarray(first["candidates"]).shape == (4, H, D) and len(first["candidate_q_values"]) == 4
    assert (
        np.float32(first["q_value"]) == np.float32(max(first["candidate_q_values"]))
        and first["client_time"] == 1.5
    )
    assert (first["model"], first["version"]) == ("chunks", 2)
    client.delete("/v1/sessions/recorded")
    reports = {}
    for version in (2, 1):
        command = [sys.executable, "-m", "server.replay", str(folder), "--model", f"chunks:{version}"]
        command += ["--model-repository", str(repository)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        reports[version] = json.loads(done.stdout)
    assert reports[2]["steps"] == 4 and reports[2]["action_abs_diff"]["max"] <= 1e-6
    assert reports[2]["best_candidate_changed"] == 0
    assert reports[1]["action_abs_diff"]["max"] > 1e-3  # other weights: the report shows it
