"""A chunked model (H = 5 actions per observation) on a real `mfql-serve`, through real clients: httpx
(REST), tritonclient.http (v2), and openpi_client's WebsocketClientPolicy inside its ActionChunkBroker."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from server.noise import request_noise
from tests.server.bundles import reference_outputs, write_test_bundle
from tests.server.conftest import CHUNK_HORIZON
from tests.server.live import BATCHING_OPTIONS, serving

H, D = CHUNK_HORIZON, 5
OBSERVATIONS = np.random.default_rng(7).standard_normal((12, 28)).astype(np.float32)
pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)


@pytest.fixture(scope="module")
def live(chunked_repository):
    with serving(chunked_repository, *BATCHING_OPTIONS) as server:
        yield server


def rest_act(http: httpx.Client, model: str = "chunks", **body) -> dict:
    if "observation" in body:
        body["observation"] = np.asarray(body["observation"]).tolist()
    response = http.post(f"/v1/models/{model}/act", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def ws_requests(http: httpx.Client) -> float:
    found = re.search(
        r'mfql_requests_total\{model="chunks",protocol="ws",status="200"\} (\S+)', http.get("/metrics").text
    )
    return float(found[1]) if found else 0.0


def test_rest_seed_reproduces_the_whole_chunk_the_graph_computes_from_its_noise(
    live, http, chunked_repository
):
    answer = rest_act(http, observation=OBSERVATIONS[0], num_candidates=6, seed=31)
    assert answer["action_horizon"] == H and np.asarray(answer["action"]).shape == (H, D)
    # the seed's noise is [K, H, d] per row: the bundle's own graph on it gives the same chunk
    noise = request_noise(31, 1, 6, (H, D))
    expected = reference_outputs(chunked_repository / "chunks" / "2" / "policy.onnx", OBSERVATIONS[:1], noise)
    assert np.float32(answer["action"]).tobytes() == expected["action"][0].tobytes()
    assert np.float32(answer["q_value"]) == expected["q_value"][0]
    batch = rest_act(http, observations=OBSERVATIONS[:3].tolist(), num_candidates=6, seed=31)
    assert np.asarray(batch["actions"]).shape == (3, H, D) and batch["action_horizon"] == H
    assert batch["actions"][0] == answer["action"]  # row 0 of a batch draws what one observation does


def test_rest_chunk_is_bit_identical_alone_and_in_a_concurrent_mixed_batch(live, http):
    alone = rest_act(http, observation=OBSERVATIONS[1], num_candidates=4, seed=2024)
    crowd = [
        (OBSERVATIONS[i % 6], k, seed) for i, (k, seed) in enumerate([(1, 1), (8, 2), (2, 3), (5, 4)] * 3)
    ]
    with ThreadPoolExecutor(8) as pool:
        mine = pool.submit(rest_act, http, observation=OBSERVATIONS[1], num_candidates=4, seed=2024)
        others = [pool.submit(rest_act, http, observation=o, num_candidates=k, seed=s) for o, k, s in crowd]
        crowded = mine.result()
        assert all(np.asarray(other.result()["action"]).shape == (H, D) for other in others)
    assert np.float32(crowded["action"]).tobytes() == np.float32(alone["action"]).tobytes()
    assert crowded["q_value"] == alone["q_value"]


def test_one_action_models_answer_as_before_next_to_a_chunked_one(live, http):
    answer = rest_act(http, "cube", observation=OBSERVATIONS[0], seed=5)
    assert np.asarray(answer["action"]).shape == (D,) and answer["action_horizon"] == 1
    listing = {m["name"] for m in http.get("/v1/models").json()["models"]}
    assert listing == {"chunks", "cube"}
    assert http.get("/v1/models/cube").json()["action_horizon"] == 1


def test_model_descriptions_carry_the_horizon_and_control_period(live, http):
    described = http.get("/v1/models/chunks").json()
    assert (described["action_dim"], described["action_horizon"], described["control_period_s"]) == (
        D,
        H,
        0.05,
    )
    v2 = http.get("/v2/models/chunks").json()
    assert v2["inputs"] == [{"name": "observation", "datatype": "FP32", "shape": [-1, 28]}]
    assert {t["name"]: t["shape"] for t in v2["outputs"]} == {
        "action": [-1, H, D],
        "q_value": [-1],
        "candidates": [-1, -1, H, D],
    }
    cube = http.get("/v2/models/cube").json()
    assert {t["name"]: t["shape"] for t in cube["outputs"]}["action"] == [-1, D]  # H = 1: unchanged


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_gets_chunks_and_candidates_of_chunks(live, http, binary):
    client = triton.InferenceServerClient(url=live.hostport)
    try:
        observation = triton.InferInput("observation", [3, 28], "FP32")
        observation.set_data_from_numpy(OBSERVATIONS[:3], binary_data=binary)
        outputs = [
            triton.InferRequestedOutput(n, binary_data=binary) for n in ("action", "q_value", "candidates")
        ]
        result = client.infer(
            "chunks", [observation], outputs=outputs, parameters={"seed": 8, "num_candidates": 3}
        )
    finally:
        client.close()
    action, candidates = result.as_numpy("action"), result.as_numpy("candidates")
    assert action.shape == (3, H, D) and candidates.shape == (3, 3, H, D)
    assert result.get_response()["parameters"]["action_horizon"] == H
    for row in range(3):  # the answered chunk is one candidate's whole chunk
        assert any(np.array_equal(action[row], chunk) for chunk in candidates[row])
    rest = rest_act(http, observations=OBSERVATIONS[:3].tolist(), seed=8, num_candidates=3)
    assert np.float32(rest["actions"]).tobytes() == action.tobytes()


def test_openpi_action_chunk_broker_hands_out_one_action_per_step_and_asks_again_after_h(live, http):
    policy = WebsocketClientPolicy(live.ws_url + "/v1/models/chunks/ws")
    metadata = policy.get_server_metadata()
    assert (metadata["action_horizon"], metadata["control_period_s"]) == (H, 0.05)
    broker = ActionChunkBroker(policy, action_horizon=metadata["action_horizon"])
    before = ws_requests(http)
    steps = [broker.infer({"observation": OBSERVATIONS[t]}) for t in range(2 * H + 1)]
    assert ws_requests(http) - before == 3  # steps 0, H and 2H asked the server; the others did not
    seeds = [step["seed"] for step in steps]
    assert len(set(seeds[:H])) == len(set(seeds[H : 2 * H])) == 1 and len(set(seeds)) == 3
    for start in (0, H):
        # the chunk answered for the observation at `start`, replayed over REST with its seed
        chunk = np.float32(rest_act(http, observation=OBSERVATIONS[start], seed=seeds[start])["action"])
        for t in range(H):
            assert steps[start + t]["actions"].shape == (D,)
            assert steps[start + t]["actions"].tobytes() == chunk[t].tobytes()
    assert steps[0]["action_horizon"] == H and np.ndim(steps[0]["q_values"]) == 0


def test_websocket_batch_answers_a_chunk_per_observation(live):
    policy = WebsocketClientPolicy(live.ws_url + "/v1/models/chunks/ws")
    reply = policy.infer({"observation": OBSERVATIONS[:4], "num_candidates": 2})
    assert reply["actions"].shape == (4, H, D) and reply["q_values"].shape == (4,)
    one = WebsocketClientPolicy(live.ws_url + "/v1/models/cube/ws").infer({"observation": OBSERVATIONS[0]})
    assert one["actions"].shape == (D,) and one["action_horizon"] == 1  # H = 1 as before


def test_metrics_histogram_the_chunk_length_of_each_answer(live, http):
    rest_act(http, observation=OBSERVATIONS[0])
    rest_act(http, "cube", observation=OBSERVATIONS[0])
    text = http.get("/metrics").text

    def histogram(model: str) -> tuple[float, float]:
        count = re.search(rf'mfql_actions_per_observation_count\{{model="{model}"\}} (\S+)', text)
        total = re.search(rf'mfql_actions_per_observation_sum\{{model="{model}"\}} (\S+)', text)
        return float(count[1]), float(total[1])

    chunks, cube = histogram("chunks"), histogram("cube")
    assert chunks[0] >= 1 and chunks[1] == H * chunks[0]
    assert cube[0] >= 1 and cube[1] == cube[0]
    assert re.search(r'mfql_actions_per_observation_bucket\{le="4.0",model="chunks"\} 0.0', text)


def test_latency_target_and_deadlines_act_on_whole_chunks(tmp_path):
    repository = tmp_path / "repository"
    write_test_bundle(
        repository / "chunks" / "1", "chunks", action_horizon=H, metadata={"default_num_candidates": 4}
    )
    # a target no inference can meet lowers K to 1; a batch waits 300 ms for company, past 50 ms
    options = ("--latency-target-ms", "0.0001", "--max-queue-delay-us", "300000")
    with serving(repository, *options) as server, ThreadPoolExecutor(2) as pool:
        body = {"observation": OBSERVATIONS[0].tolist(), "seed": 3}

        def post(extra: dict) -> httpx.Response:
            return httpx.post(f"{server.url}/v1/models/chunks/act", json={**body, **extra}, timeout=30)

        patient, hurried = pool.submit(post, {"deadline_ms": 30_000}), pool.submit(post, {"deadline_ms": 50})
        answer, refused = patient.result().json(), hurried.result()
        named = post({"num_candidates": 4}).json()
    assert answer["num_candidates"] == 1 and np.asarray(answer["action"]).shape == (H, D)
    assert named["num_candidates"] == 4 and np.asarray(named["action"]).shape == (H, D)
    assert refused.status_code == 504 and "dropped without computing" in refused.json()["error"]
