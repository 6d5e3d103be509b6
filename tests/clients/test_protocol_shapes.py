"""The request and response shapes of the three protocols, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from clients import InvalidInput, ServerError, codec
from clients.errors import DeadlineExceeded, Overloaded, error_for_status
from clients.protocol import (
    ModelMetadata,
    error_message,
    observation_batch,
    parse_rest_act,
    parse_v2_infer,
    parse_ws_reply,
    rest_act_body,
    v2_infer_body,
    ws_request,
)
from clients.websocket_client import error_from_text, websocket_url

BATCH = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.25]], np.float32)


def test_rest_bodies_for_one_observation_and_a_batch():
    assert rest_act_body(BATCH[:1], single=True, num_candidates=4) == {
        "observation": [0.5, -1.0, 2.0],
        "num_candidates": 4,
    }
    assert rest_act_body(BATCH, single=False, seed=3, version="2") == {
        "observations": BATCH.tolist(),
        "seed": 3,
        "version": "2",
    }


def test_v2_body_is_a_flat_fp32_tensor_with_parameters():
    body = v2_infer_body(BATCH, num_candidates=8, seed=1)
    assert body["inputs"] == [
        {"name": "observation", "shape": [2, 3], "datatype": "FP32", "data": BATCH.ravel().tolist()}
    ]
    assert body["parameters"] == {"num_candidates": 8, "seed": 1}
    assert "parameters" not in v2_infer_body(BATCH)


def test_answers_of_all_protocols_parse_to_batched_actions():
    rest_one = parse_rest_act({"action": [0.1, 0.2], "q_value": 3.0, "num_candidates": 2, "seed": 9})
    rest_many = parse_rest_act({"actions": [[0.1, 0.2], [0.3, 0.4]], "q_values": [1.0, 2.0], "version": 1})
    v2 = parse_v2_infer(
        {
            "model_name": "m",
            "model_version": "1",
            "outputs": [
                {"name": "action", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]},
                {"name": "q_value", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
            ],
        }
    )
    ws = parse_ws_reply(
        codec.unpackb(codec.packb({"actions": np.zeros(2, np.float32), "q_values": np.float32(1.0)})),
        single=True,
    )
    assert rest_one.actions.shape == (1, 2) and (rest_one.num_candidates, rest_one.seed) == (2, 9)
    assert rest_many.actions.shape == (2, 2) and rest_many.version == "1"
    np.testing.assert_array_equal(v2.actions, rest_many.actions)
    assert (v2.model, v2.version) == ("m", "1")
    assert ws.actions.shape == (1, 2) and ws.q_values.shape == (1,)


CHUNK = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]  # H = 3 actions of d = 2


def test_chunk_answers_of_all_protocols_parse_to_batched_chunks():
    rest_one = parse_rest_act({"action": CHUNK, "q_value": 3.0, "action_horizon": 3})
    rest_many = parse_rest_act({"actions": [CHUNK, CHUNK], "q_values": [1.0, 2.0], "action_horizon": 3})
    v2 = parse_v2_infer(
        {
            "outputs": [
                {
                    "name": "action",
                    "shape": [2, 3, 2],
                    "datatype": "FP32",
                    "data": np.ravel([CHUNK] * 2).tolist(),
                },
                {"name": "q_value", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
            ],
        }
    )
    ws_reply = {"actions": np.float32(CHUNK), "q_values": np.float32(1.0), "action_horizon": 3}
    ws_one = parse_ws_reply(codec.unpackb(codec.packb(ws_reply)), single=True)
    ws_many = parse_ws_reply({"actions": np.float32([CHUNK] * 2), "q_values": np.ones(2)}, single=False)
    for answer, batch in ((rest_one, 1), (rest_many, 2), (v2, 2), (ws_one, 1), (ws_many, 2)):
        assert answer.actions.shape == answer.chunks.shape == (batch, 3, 2)
        assert answer.action_horizon == 3 and answer.q_values.shape == (batch,)
        np.testing.assert_array_equal(answer.chunks[0], np.float32(CHUNK))


def test_horizon_one_answers_keep_their_shape_with_or_without_the_action_horizon_key():
    plain = parse_rest_act({"action": [0.1, 0.2], "q_value": 3.0})
    keyed = parse_rest_act({"action": [0.1, 0.2], "q_value": 3.0, "action_horizon": 1})
    one_step_chunk = parse_ws_reply({"actions": np.zeros((1, 2)), "q_values": 0.0}, single=True)
    for answer in (plain, keyed, one_step_chunk):
        assert answer.actions.shape == (1, 2) and answer.chunks.shape == (1, 1, 2)
        assert answer.action_horizon == 1


def test_websocket_single_chunk_is_not_mistaken_for_a_batch():
    # one observation's (H, D) chunk and a batch of H actions have the same array shape
    one = parse_ws_reply({"actions": np.float32(CHUNK), "q_values": 1.0}, single=True)
    batch = parse_ws_reply({"actions": np.float32(CHUNK), "q_values": np.ones(3)}, single=False)
    assert one.actions.shape == (1, 3, 2) and batch.actions.shape == (3, 2)


def test_answer_whose_action_horizon_disagrees_with_its_actions_raises_server_error():
    with pytest.raises(ServerError, match="action_horizon=4 but carries 3 action"):
        parse_rest_act({"action": CHUNK, "q_value": 1.0, "action_horizon": 4})
    with pytest.raises(ServerError, match="per observation"):
        parse_rest_act({"action": [CHUNK], "q_value": 1.0})


def test_unreadable_answers_raise_server_error():
    with pytest.raises(ServerError, match="unreadable act response"):
        parse_rest_act({"nothing": True})
    with pytest.raises(ServerError, match="v2"):
        parse_v2_infer({"outputs": [{"name": "action"}]})


def test_observation_batch_refuses_bad_input():
    assert observation_batch([1, 2, 3], single=True).dtype == np.float32
    with pytest.raises(InvalidInput, match="non-empty"):
        observation_batch(np.zeros((0, 3)), single=False)
    with pytest.raises(InvalidInput, match=r"index \(1, 0\)"):
        observation_batch([[1, 2], [np.inf, 0]], single=False)


def test_ws_request_keeps_numpy_arrays_for_the_codec():
    message = codec.unpackb(codec.packb(ws_request(BATCH[:1], single=True, num_candidates=2)))
    np.testing.assert_array_equal(message["observation"], BATCH[0])
    assert message["num_candidates"] == 2 and "seed" not in message


def test_metadata_from_native_and_v2():
    native = ModelMetadata.from_native({"name": "m", "obs_dim": 3, "action_dim": 2, "versions": [1, 2]})
    v2 = ModelMetadata.from_v2(
        {
            "name": "m",
            "versions": ["1"],
            "inputs": [{"name": "observation", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "action", "datatype": "FP32", "shape": [-1, 2]}],
        }
    )
    assert (native.obs_dim, native.action_dim, native.versions) == (3, 2, ("1", "2"))
    assert (v2.obs_dim, v2.action_dim, v2.action_low) == (3, 2, None)
    assert (native.action_horizon, v2.action_horizon, native.control_period_s) == (1, 1, None)
    with pytest.raises(ServerError, match="obs_dim"):
        ModelMetadata.from_native({"name": "m"})


def test_metadata_of_a_chunked_model_carries_its_horizon_and_control_period():
    described = {"name": "m", "obs_dim": 3, "action_dim": 2, "action_horizon": 5, "control_period_s": 0.05}
    native = ModelMetadata.from_native(described)
    v2 = ModelMetadata.from_v2(
        {
            "name": "m",
            "inputs": [{"name": "observation", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "action", "datatype": "FP32", "shape": [-1, 5, 2]}],
        }
    )
    assert (native.action_horizon, native.control_period_s, native.action_dim) == (5, 0.05, 2)
    assert (v2.action_horizon, v2.action_dim) == (5, 2)
    assert ModelMetadata.from_native({**described, "control_period_s": None}).control_period_s is None
    with pytest.raises(ServerError, match="action_horizon=0"):
        ModelMetadata.from_native({**described, "action_horizon": 0})


def test_error_messages_from_json_fastapi_and_text_bodies():
    assert error_message(b'{"error": "bad observation"}') == "bad observation"
    detail = b'{"detail": [{"loc": ["body", "observation"], "msg": "too short"}]}'
    assert error_message(detail) == "observation: too short"
    assert error_message(b"Internal Server Error") == "Internal Server Error"
    assert isinstance(error_for_status(503, "full", 1.0), Overloaded)
    assert isinstance(error_for_status(504, "late"), DeadlineExceeded)


def test_websocket_text_errors_are_typed_when_they_carry_a_status():
    assert isinstance(error_from_text('{"status": 400, "error": "observation: bad"}'), InvalidInput)
    plain = error_from_text("observation has 30 values, expected 28")
    assert isinstance(plain, ServerError) and plain.message == "observation has 30 values, expected 28"


def test_websocket_urls():
    assert websocket_url("http://127.0.0.1:8000", "cube") == "ws://127.0.0.1:8000/v1/models/cube/ws"
    assert websocket_url("https://host/prefix/", None) == "wss://host/prefix/"
    with pytest.raises(ValueError, match="http"):
        websocket_url("ftp://host", None)
