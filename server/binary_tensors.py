"""Open Inference Protocol v2 tensors: JSON `data` and the binary tensor data extension.

Binary extension (what `tritonclient.http` uses by default): the body is the JSON header
followed by the raw little-endian, row-major bytes of every input whose parameters carry
`binary_data_size`, in input order; the `Inference-Header-Content-Length` request header
gives the JSON length. Outputs go back the same way when the request asks for it (per
output `parameters.binary_data`, or `binary_data_output` for all), with the response
header set to the JSON length.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import InvalidInput, MalformedRequest, PayloadTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPE_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray


def decode_content(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo `Content-Encoding: gzip|deflate` (tritonclient's request compression), within the size limit."""
    if encoding in (None, "", "identity"):
        return body
    windows = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
    if encoding not in windows:
        raise MalformedRequest(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    inflater = zlib.decompressobj(windows[encoding])
    try:
        plain = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise MalformedRequest(f"body is not valid {encoding} data: {exc}") from exc
    if len(plain) > max_bytes or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request body exceeds the limit of {max_bytes} bytes")
    return plain


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header and the binary tail (empty when the request is JSON only)."""
    if header_length is None:
        length = len(body)
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise MalformedRequest(
                f"{HEADER_LENGTH}: {header_length!r} is not a length within the {len(body)}-byte body"
            )
        length = int(header_length)
    try:
        header = json.loads(bytes(body[:length]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"request header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise MalformedRequest("request header must be a JSON object with 'inputs'")
    return header, memoryview(body)[length:]


def parse_inputs(header: dict, binary: memoryview) -> dict[str, Tensor]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise MalformedRequest("'inputs' must be a non-empty list of tensors")
    tensors, offset = {}, 0
    for index, spec in enumerate(inputs):
        tensor, offset = _parse_input(spec, index, binary, offset)
        if tensor.name in tensors:
            # readable, but names one input twice: a wrong value (422), not broken framing (400)
            raise InvalidInput(f"inputs: {tensor.name!r} appears twice; send each input once")
        tensors[tensor.name] = tensor
    if offset != len(binary):
        raise MalformedRequest(
            f"binary inputs declare {offset} bytes but {len(binary)} follow the JSON header"
        )
    return tensors


def _parse_input(spec: Any, index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise MalformedRequest(f"inputs[{index}] must be an object with 'name', 'shape', 'datatype'")
    name, datatype, shape = spec["name"], spec.get("datatype"), _shape(spec.get("shape"))
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"{name}: datatype {datatype!r} is not supported ({', '.join(DATATYPES)})")
    if shape is None:
        raise MalformedRequest(
            f"{name}: 'shape' must be a list of non-negative integers, got {spec.get('shape')!r}"
        )
    dtype, count = DATATYPES[datatype], math.prod(shape)
    size = parameters_of(spec, name).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or offset + size > len(binary):
            raise MalformedRequest(
                f"{name}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes) or the {len(binary) - offset} bytes left in the body"
            )
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype)
        return Tensor(name, datatype, _reshaped(array, shape, name)), offset + size
    if "data" not in spec:
        raise MalformedRequest(f"{name}: needs 'data' or parameters.binary_data_size")
    try:
        array = np.asarray(spec["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: beyond the datatype's range
        raise InvalidInput(f"{name}: 'data' is not {datatype} numbers ({exc})") from exc
    if array.size != count:
        raise InvalidInput(f"{name}: shape {shape} needs {count} values, 'data' has {array.size}")
    return Tensor(name, datatype, _reshaped(array, shape, name)), offset


def _reshaped(array: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    """`array` (as many values as `shape` holds) in that shape. numpy refuses shapes whose other
    axes multiply past its size limit even when an empty axis leaves them holding no values."""
    try:
        return array.reshape(shape)
    except ValueError as exc:
        raise InvalidInput(f"{name}: shape {shape} is too large to represent ({exc})") from exc


def _shape(value: Any) -> list[int] | None:
    """A list of non-negative integers (JSON's 3.0 is an integer too), else None."""
    if not isinstance(value, list):
        return None
    shape = []
    for dim in value:
        if isinstance(dim, bool) or not isinstance(dim, (int, float)) or not math.isfinite(dim):
            return None
        if dim < 0 or dim != int(dim):
            return None
        shape.append(int(dim))
    return shape


def parameters_of(spec: dict, where: str) -> dict:
    """The `parameters` object of a request, input or output (absent: empty)."""
    parameters = spec.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise MalformedRequest(f"{where}: 'parameters' must be an object, got {parameters!r}")
    return parameters


def requested_outputs(
    header: dict, known: tuple[str, ...], default: tuple[str, ...]
) -> list[tuple[str, bool]]:
    """(name, as binary) of each output to return, in request order."""
    all_binary = bool(parameters_of(header, "request").get("binary_data_output", False))
    outputs = header.get("outputs")
    if not outputs:
        return [(name, all_binary) for name in default]
    chosen = []
    for spec in outputs:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in known:
            raise InvalidInput(f"outputs: unknown output {name!r}; this model has {list(known)}")
        binary = parameters_of(spec, name).get("binary_data", all_binary)
        chosen.append((name, bool(binary)))
    return chosen


def encode_response(header: dict, outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON length for `HEADER_LENGTH`."""
    tensors, blobs = [], []
    for name, array, binary in outputs:
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": DATATYPE_NAMES[array.dtype],
            "shape": list(array.shape),
        }
        if binary:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    text = json.dumps({**header, "outputs": tensors}, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
