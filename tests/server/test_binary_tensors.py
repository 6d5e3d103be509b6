"""v2 tensors: the binary tensor data extension's framing, both ways, and its refusals."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from server.binary_tensors import decode_content, encode_response, parse_inputs, requested_outputs, split_body
from server.errors import InvalidInput, MalformedRequest, PayloadTooLarge

OBSERVATION = np.arange(6, dtype=np.float32).reshape(2, 3)


def binary_request(
    *tensors: tuple[str, str, np.ndarray], parameters: dict | None = None
) -> tuple[bytes, str]:
    inputs = [
        {"name": n, "datatype": d, "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
        for n, d, a in tensors
    ]
    header = json.dumps({"inputs": inputs, "parameters": parameters or {}}).encode()
    return header + b"".join(a.tobytes() for _, _, a in tensors), str(len(header))


def test_binary_inputs_follow_the_json_header_in_order():
    body, length = binary_request(
        ("observation", "FP32", OBSERVATION), ("seed", "INT64", np.array([7], np.int64))
    )
    header, tail = split_body(body, length)
    tensors = parse_inputs(header, tail)
    np.testing.assert_array_equal(tensors["observation"].array, OBSERVATION)
    assert tensors["seed"].array.tolist() == [7] and tensors["seed"].datatype == "INT64"


def test_json_inputs_may_be_flat_or_nested():
    for data in (OBSERVATION.ravel().tolist(), OBSERVATION.tolist()):
        header = {"inputs": [{"name": "observation", "datatype": "FP32", "shape": [2, 3], "data": data}]}
        np.testing.assert_array_equal(parse_inputs(header, memoryview(b""))["observation"].array, OBSERVATION)


@pytest.mark.parametrize(
    ("header", "tail", "error", "message"),
    [
        ({"inputs": []}, b"", MalformedRequest, "non-empty list"),
        ({"inputs": [{"name": "o", "datatype": "FP32", "shape": [2, 3],
                      "parameters": {"binary_data_size": 20}}]}, b"\0" * 20, MalformedRequest, "does not match shape"),
        ({"inputs": [{"name": "o", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}, b"\0\0", MalformedRequest,
         "declare 0 bytes but 2 follow"),
        ({"inputs": [{"name": "o", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, b"", InvalidInput,
         "datatype 'BYTES' is not supported"),
        ({"inputs": [{"name": "o", "datatype": "FP32", "shape": [2, 3], "data": [1.0]}]}, b"", InvalidInput,
         r"shape \[2, 3\] needs 6 values, 'data' has 1"),
        ({"inputs": [{"name": "o", "datatype": "FP32", "shape": [-1, 3], "data": [1.0]}]}, b"", MalformedRequest,
         "non-negative integers"),
        # schema-valid bodies (the OpenAPI document allows them): a wrong value, 422, never 400 or 500
        ({"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1], "data": [1]}] * 2}, b"", InvalidInput,
         "inputs: 'seed' appears twice"),
        ({"inputs": [{"name": "seed", "datatype": "UINT8", "shape": [1], "data": [2**70]}]}, b"", InvalidInput,
         "seed: 'data' is not UINT8 numbers"),
        ({"inputs": [{"name": "seed", "datatype": "FP16", "shape": [131, 1996913, 261, 428735324, 0],
                      "data": []}]}, b"", InvalidInput, "is too large to represent"),
    ],
)  # fmt: skip
def test_inconsistent_tensors_are_refused(header, tail, error, message):
    with pytest.raises(error, match=message):
        parse_inputs(header, memoryview(tail))


def test_header_length_must_fit_the_body():
    with pytest.raises(MalformedRequest, match="Inference-Header-Content-Length"):
        split_body(b"{}", "10")
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        split_body(b"{oops", None)


def test_outputs_are_binary_when_asked_per_output_or_for_all():
    header = {"outputs": [{"name": "q_value", "parameters": {"binary_data": True}}, {"name": "action"}]}
    assert requested_outputs(header, ("action", "q_value"), ("action",)) == [
        ("q_value", True),
        ("action", False),
    ]
    everything = {"parameters": {"binary_data_output": True}}
    assert requested_outputs(everything, ("action", "q_value"), ("action", "q_value")) == [
        ("action", True),
        ("q_value", True),
    ]
    with pytest.raises(InvalidInput, match="unknown output 'value'"):
        requested_outputs({"outputs": [{"name": "value"}]}, ("action",), ("action",))


def test_binary_response_puts_the_json_length_first_and_raw_bytes_after():
    q = np.array([1.5, -2.0], np.float32)
    body, length = encode_response(
        {"model_name": "m"}, [("action", OBSERVATION, False), ("q_value", q, True)]
    )
    header = json.loads(body[:length])
    assert header["outputs"][0]["data"] == OBSERVATION.ravel().tolist()
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), q)
    assert encode_response({}, [("action", OBSERVATION, False)])[1] is None


def test_compressed_requests_are_inflated_within_the_limit():
    assert decode_content(gzip.compress(b"{}"), "gzip", 100) == b"{}"
    with pytest.raises(PayloadTooLarge):
        decode_content(gzip.compress(b"x" * 1000), "gzip", 100)
    with pytest.raises(MalformedRequest, match="'br' is not supported"):
        decode_content(b"", "br", 100)
