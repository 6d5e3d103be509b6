"""API keys on a real server: REST, v2 (tritonclient with a header) and the WebSocket (openpi's Api-Key)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import websockets
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from tritonclient.utils import InferenceServerException

from tests.server.live import serving

KEY = "robot-key-0123"
pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)


@pytest.fixture(scope="module")
def secured(shared_repository, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("auth") / "keys.txt"
    key_file.write_text(KEY + "\n")
    with serving(shared_repository, "--api-key-file", str(key_file)) as server:
        yield server


def test_rest_needs_a_key_but_health_and_metrics_do_not(secured):
    body = {"observation": [0.0] * 28}
    refused = httpx.post(f"{secured.url}/v1/models/cube/act", json=body)
    assert refused.status_code == 401 and "missing API key" in refused.json()["error"]
    wrong = httpx.post(
        f"{secured.url}/v1/models/cube/act", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid API key"}
    ok = httpx.post(
        f"{secured.url}/v1/models/cube/act", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert ok.status_code == 200
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(secured.url + path).status_code == 200


def test_tritonclient_with_and_without_the_key(secured):
    client = triton.InferenceServerClient(url=secured.hostport)
    observation = triton.InferInput("observation", [1, 28], "FP32")
    observation.set_data_from_numpy(np.zeros((1, 28), np.float32))
    try:
        with pytest.raises(InferenceServerException, match="missing API key") as refused:
            client.infer("cube", [observation])
        assert refused.value.status() == "401"
        result = client.infer("cube", [observation], headers={"Authorization": f"Bearer {KEY}"})
        assert result.as_numpy("action").shape == (1, 5)
    finally:
        client.close()


def test_openpi_client_sends_its_api_key(secured):
    policy = WebsocketClientPolicy(secured.ws_url + "/v1/models/cube/ws", api_key=KEY)
    assert policy.infer({"observation": np.zeros(28, np.float32)})["actions"].shape == (5,)
    with pytest.raises(websockets.InvalidStatus) as refused:
        WebsocketClientPolicy(secured.ws_url + "/v1/models/cube/ws", api_key="wrong")
    assert refused.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus):
        WebsocketClientPolicy(secured.ws_url)
