"""A real `mfql-serve` process, driven by real clients: httpx (REST), tritonclient.http (v2, JSON and
binary), openpi_client (WebSocket), and a Prometheus scrape."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from tritonclient.utils import InferenceServerException

from tests.server.live import BATCHING_OPTIONS, serving

OBSERVATIONS = np.random.default_rng(0).standard_normal((4, 28)).astype(np.float32)
pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)


@pytest.fixture(scope="module")
def live(shared_repository):
    with serving(shared_repository, *BATCHING_OPTIONS) as server:
        yield server


@pytest.fixture
def triton_client(live):
    client = triton.InferenceServerClient(url=live.hostport)
    yield client
    client.close()


def rest_act(http: httpx.Client, observation, **options) -> dict:
    response = http.post("/v1/models/cube/act", json={"observation": observation.tolist(), **options})
    assert response.status_code == 200, response.text
    return response.json()


def test_rest_seeded_request_is_bit_identical_alone_and_in_a_concurrent_mixed_batch(live, http):
    alone = rest_act(http, OBSERVATIONS[0], num_candidates=4, seed=2024)
    crowd = [
        (OBSERVATIONS[i % 4], k, seed) for i, (k, seed) in enumerate([(1, 1), (8, 2), (2, 3), (5, 4)] * 4)
    ]
    with ThreadPoolExecutor(8) as pool:
        mine = pool.submit(rest_act, http, OBSERVATIONS[0], num_candidates=4, seed=2024)
        others = [pool.submit(rest_act, http, o, num_candidates=k, seed=s) for o, k, s in crowd]
        crowded = mine.result()
        [other.result() for other in others]
    assert np.float32(crowded["action"]).tobytes() == np.float32(alone["action"]).tobytes()
    assert crowded["q_value"] == alone["q_value"] and crowded["seed"] == 2024
    sizes = http.get("/metrics").text
    single_batches = float(re.search(r'mfql_batch_size_bucket\{le="1.0",model="cube"\} (\S+)', sizes)[1])
    all_batches = float(re.search(r'mfql_batch_size_count\{model="cube"\} (\S+)', sizes)[1])
    assert all_batches > single_batches, "no batch held more than one request"


def test_rest_default_model_and_version_pinning(live, http):
    assert http.get("/v1/models").json()["default"] == "arm"
    arm = http.post("/v1/act", json={"observation": [0.1] * 7}).json()
    assert (arm["model"], len(arm["action"])) == ("arm", 2)
    newest = rest_act(http, OBSERVATIONS[1], seed=5)
    pinned = rest_act(http, OBSERVATIONS[1], seed=5, version="1")
    assert (newest["version"], pinned["version"]) == ("2", "1")
    assert newest["action"] != pinned["action"]  # versions 1 and 2 have different weights


def test_same_seed_gives_the_same_action_over_rest_v2_and_websocket(live, http, triton_client):
    rest = rest_act(http, OBSERVATIONS[2], num_candidates=3, seed=77)
    request = triton.InferInput("observation", [1, 28], "FP32")
    request.set_data_from_numpy(OBSERVATIONS[2:3])
    v2 = triton_client.infer("cube", [request], parameters={"num_candidates": 3, "seed": 77})
    policy = WebsocketClientPolicy(live.ws_url + "/v1/models/cube/ws")
    ws = policy.infer({"observation": OBSERVATIONS[2], "num_candidates": 3, "seed": 77})
    expected = np.float32(rest["action"]).tobytes()
    assert v2.as_numpy("action")[0].tobytes() == expected
    assert np.asarray(ws["actions"], np.float32).tobytes() == expected


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])
def test_tritonclient_infer_with_binary_data_on_and_off(triton_client, binary_in, binary_out):
    request = triton.InferInput("observation", list(OBSERVATIONS.shape), "FP32")
    request.set_data_from_numpy(OBSERVATIONS, binary_data=binary_in)
    outputs = None  # tritonclient then asks for every output in binary (binary_data_output)
    if binary_out is not None:
        outputs = [triton.InferRequestedOutput(n, binary_data=binary_out) for n in ("action", "q_value")]
    result = triton_client.infer(
        "cube", [request], outputs=outputs, parameters={"seed": 11, "num_candidates": 4}
    )
    reference = triton_client.infer(
        "cube", [request], outputs=[triton.InferRequestedOutput(n, binary_data=False) for n in ("action", "q_value")],
        parameters={"seed": 11, "num_candidates": 4},
    )  # fmt: skip
    assert result.as_numpy("action").shape == (4, 5) and result.as_numpy("q_value").shape == (4,)
    np.testing.assert_array_equal(result.as_numpy("action"), reference.as_numpy("action"))
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == ("cube", "2")
    parameters = response["parameters"]
    assert (parameters["seed"], parameters["num_candidates"]) == (11, 4)
    assert {"timing_ms_queue", "timing_ms_inference", "timing_ms_total"} <= set(parameters)


def test_tritonclient_candidates_output_int_inputs_and_version(triton_client):
    observation = triton.InferInput("observation", [2, 28], "FP32")
    observation.set_data_from_numpy(OBSERVATIONS[:2])
    k = triton.InferInput("num_candidates", [1], "INT32")
    k.set_data_from_numpy(np.array([6], np.int32))
    seed = triton.InferInput("seed", [1], "INT64")
    seed.set_data_from_numpy(np.array([9], np.int64))
    outputs = [triton.InferRequestedOutput(n) for n in ("action", "candidates")]
    result = triton_client.infer("cube", [observation, k, seed], outputs=outputs, model_version="1")
    candidates = result.as_numpy("candidates")
    assert candidates.shape == (2, 6, 5) and result.as_numpy("q_value") is None
    assert any(np.array_equal(result.as_numpy("action")[0], c) for c in candidates[0])
    assert result.get_response()["model_version"] == "1"


def test_tritonclient_health_metadata_and_errors(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("cube") and triton_client.is_model_ready("cube", "1")
    assert not triton_client.is_model_ready("nope")
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]
    metadata = triton_client.get_model_metadata("cube")
    assert metadata["inputs"] == [{"name": "observation", "datatype": "FP32", "shape": [-1, 28]}]
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "onnxruntime_onnx"
    wrong = triton.InferInput("observation", [1, 27], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 27), np.float32))
    with pytest.raises(
        InferenceServerException, match=r"observation: expected shape .*got \[1, 27\]"
    ) as refused:
        triton_client.infer("cube", [wrong])
    assert refused.value.status() == "422"
    with pytest.raises(InferenceServerException, match="model 'nope' not found") as missing:
        triton_client.infer("nope", [wrong])
    assert missing.value.status() == "404"


def test_v2_json_body_with_nested_data(http):
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "observation", "shape": [2, 28], "datatype": "FP32", "data": OBSERVATIONS[:2].tolist()}
        ],
        "parameters": {"seed": 3},
    }
    answer = http.post("/v2/models/cube/versions/2/infer", json=body).json()
    assert answer["id"] == "req-1" and [o["name"] for o in answer["outputs"]] == ["action", "q_value"]
    assert answer["outputs"][0]["shape"] == [2, 5] and len(answer["outputs"][0]["data"]) == 10


def test_openpi_client_on_the_default_path_and_the_model_path(live):
    default = WebsocketClientPolicy(live.ws_url)
    assert default.get_server_metadata()["name"] == "arm"
    assert np.asarray(default.infer({"observation": np.zeros(7, np.float32)})["actions"]).shape == (2,)
    policy = WebsocketClientPolicy(live.ws_url + "/v1/models/cube/ws")
    metadata = policy.get_server_metadata()
    assert (metadata["obs_dim"], metadata["action_dim"], metadata["max_num_candidates"]) == (28, 5, 8)
    assert metadata["provider"] == "CPUExecutionProvider" and metadata["versions"] == ["1", "2"]
    batch = policy.infer({"observation": OBSERVATIONS, "num_candidates": 2, "prompt": "ignored"})
    assert batch["actions"].shape == (4, 5) and batch["q_values"].shape == (4,)
    with pytest.raises(RuntimeError, match="observation: expected shape"):
        policy.infer({"observation": np.zeros(3, np.float32)})
    assert policy.infer({"observation": OBSERVATIONS[0]})["actions"].shape == (5,)  # still usable


def test_metrics_scrape_is_prometheus_text(live, http):
    rest_act(http, OBSERVATIONS[0])
    v2 = {"inputs": [{"name": "observation", "shape": [1, 28], "datatype": "FP32", "data": [0.0] * 28}]}
    assert http.post("/v2/models/cube/infer", json=v2).status_code == 200
    v2["inputs"][0]["shape"] = [1, 27]  # does not match the 28 values sent
    assert http.post("/v2/models/cube/infer", json=v2).status_code == 422
    WebsocketClientPolicy(live.ws_url + "/v1/models/cube/ws").infer({"observation": OBSERVATIONS[0]})
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for protocol in ("rest", "v2", "ws"):
        assert re.search(
            rf'mfql_requests_total\{{model="cube",protocol="{protocol}",status="200"\}} [1-9]', text
        )
    assert 'mfql_requests_total{model="cube",protocol="v2",status="422"}' in text
    assert "# TYPE mfql_request_duration_seconds histogram" in text
    assert "mfql_model_versions_loaded 3.0" in text
