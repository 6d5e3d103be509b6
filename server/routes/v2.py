"""Open Inference Protocol v2 (KServe / Triton): server and model metadata, readiness, infer.

Inputs: `observation` FP32 [B, obs_dim]; `num_candidates`, `seed` (and `deadline_ms`) as request
parameters or as INT32/INT64 inputs of one element. Triton's `timeout` parameter (microseconds,
`tritonclient`'s `timeout=`) is honoured as a deadline. Outputs: `action` [B, action_dim],
`q_value` [B] by default, `candidates` [B, K, action_dim] when asked for; a chunked model
(action horizon H > 1) answers `action` [B, H, action_dim] and `candidates` [B, K, H, action_dim].
The noise is drawn here from the seed, so it is no input. The response parameters carry
`num_candidates`, `seed`, `action_horizon` and `timing_ms_{queue,inference,total}`.
"""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

from fastapi import APIRouter, Path, Request, Response

from server.binary_tensors import (
    DATATYPES,
    HEADER_LENGTH,
    Tensor,
    decode_content,
    encode_response,
    parameters_of,
    parse_inputs,
    requested_outputs,
    split_body,
)
from server.deps import metrics_of, repository_of, settings_of
from server.errors import InvalidInput
from server.routes.raw import RawRoutes
from server.schemas import VERSION_LIMIT, error_responses
from server.served_model import ModelVersion

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
hot_routes = RawRoutes(prefix="/v2", tags=["Open Inference Protocol v2"])  # infer: on the app, first

OUTPUTS = ("action", "q_value", "candidates")
DEFAULT_OUTPUTS = ("action", "q_value")
INTEGER_TYPES = ("INT32", "INT64", "UINT32", "UINT64")


def _version() -> str:
    try:
        return importlib.metadata.version("mfql")
    except importlib.metadata.PackageNotFoundError:  # a source tree without install
        return "unknown"


@router.get("")
async def server_metadata() -> dict:
    return {"name": "mfql", "version": _version(), "extensions": ["binary_tensor_data"]}


def model_metadata(model: ModelVersion, versions: list[int], platform: str) -> dict:
    obs, chunk = model.obs_dim, list(model.chunk_shape)  # [d], or [H, d] for a chunked model
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": platform,
        "inputs": [{"name": "observation", "datatype": "FP32", "shape": [-1, obs]}],
        "outputs": [
            {"name": "action", "datatype": "FP32", "shape": [-1, *chunk]},
            {"name": "q_value", "datatype": "FP32", "shape": [-1]},
            {"name": "candidates", "datatype": "FP32", "shape": [-1, -1, *chunk]},
        ],
    }


TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"enum": ["observation", "num_candidates", "seed"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": list(DATATYPES)},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}
OUTPUT = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"enum": list(OUTPUTS)}, "parameters": {"type": "object"}},
}
# JSON tensors; the binary extension (a JSON header, then raw tensors, with the header's length in
# `Inference-Header-Content-Length`) is the same request framed differently (binary_tensors.py).
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": TENSOR, "minItems": 1},
                        "outputs": {"type": "array", "items": OUTPUT},
                    },
                }
            },
        },
    }
}
METADATA_ERRORS = error_responses(401, 404, 422, 503)
INFER_ERRORS = error_responses(400, 401, 404, 413, 422, 500, 503, 504)
VersionPath = Path(ge=1, lt=VERSION_LIMIT, description="a positive integer")


async def get_model_metadata(request: Request, name: str, version: int | None = None) -> dict:
    repository, settings = repository_of(request), settings_of(request)
    model = repository.resolve(name, version)
    platform = "pytorch_libtorch" if settings.backend == "torchscript" else "onnxruntime_onnx"
    return model_metadata(model, repository.versions(name), platform)


@router.get("/models/{name}", responses=METADATA_ERRORS)
async def newest_model_metadata(name: str, request: Request) -> dict:
    return await get_model_metadata(request, name)


@router.get("/models/{name}/versions/{version}", responses=METADATA_ERRORS)
async def model_version_metadata(name: str, request: Request, version: int = VersionPath) -> dict:
    return await get_model_metadata(request, name, version)


def ready_answer(request: Request, name: str, version: int | None = None) -> dict:
    model = repository_of(request).resolve(name, version)
    return {"name": model.name, "version": str(model.version), "ready": True}


@router.get("/models/{name}/ready", responses=METADATA_ERRORS)
async def model_ready(name: str, request: Request) -> dict:
    return ready_answer(request, name)


@router.get("/models/{name}/versions/{version}/ready", responses=METADATA_ERRORS)
async def model_version_ready(name: str, request: Request, version: int = VersionPath) -> dict:
    return ready_answer(request, name, version)


@hot_routes.post("/models/{name}/infer", responses=INFER_ERRORS, openapi_extra=INFER_BODY)
async def infer(name: str, request: Request) -> Response:
    """JSON tensors, or the binary tensor data extension (`Inference-Header-Content-Length`).

    Outputs `action` [B, action_dim], `q_value` [B], `candidates` [B, K, action_dim]; from a
    chunked model (action horizon H > 1) `action` [B, H, action_dim] and `candidates`
    [B, K, H, action_dim] (`GET /v2/models/{name}` shows the model's shapes)."""
    return await infer_on(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", responses=INFER_ERRORS, openapi_extra=INFER_BODY)
async def infer_version(name: str, request: Request, version: int = VersionPath) -> Response:
    return await infer_on(request, name, version)


async def infer_on(request: Request, name: str, version: int | None) -> Response:
    received = time.perf_counter()
    metrics, settings = metrics_of(request), settings_of(request)
    with metrics.track("v2") as tracked:
        model = repository_of(request).resolve(name, version)
        tracked.model = model.name
        body = decode_content(
            await request.body(), request.headers.get("content-encoding"), settings.max_request_bytes
        )
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        tensors = parse_inputs(header, binary)
        outputs = requested_outputs(header, OUTPUTS, DEFAULT_OUTPUTS)
        act = model.check_request(
            observation_input(tensors, model),
            **options(parameters_of(header, "request"), tensors),
            received=received,
        )
        result = await model.act(act, received)
        metrics.record_result(result)
        values = {"action": result.actions, "q_value": result.q_values, "candidates": result.candidates}
        response_header: dict[str, Any] = {
            "model_name": model.name,
            "model_version": str(model.version),
            "parameters": {
                "num_candidates": result.num_candidates,
                "seed": result.seed,
                "action_horizon": result.action_horizon,
                **{f"timing_ms_{key}": value for key, value in result.timing_ms.items()},
            },
        }
        if "id" in header:
            response_header["id"] = header["id"]
        content, json_length = encode_response(response_header, [(n, values[n], b) for n, b in outputs])
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
        )


def observation_input(tensors: dict[str, Tensor], model: ModelVersion):
    unknown = sorted(set(tensors) - {"observation", "num_candidates", "seed"})
    if unknown:
        raise InvalidInput(
            f"inputs: unknown {unknown}; expected 'observation' (and optional num_candidates, seed)"
        )
    tensor = tensors.get("observation")
    if tensor is None:
        raise InvalidInput(f"inputs: 'observation' FP32 [B, {model.obs_dim}] is required")
    if tensor.datatype != "FP32" or tensor.array.ndim != 2:
        raise InvalidInput(
            f"observation: expected FP32 of shape [B, {model.obs_dim}], "
            f"got {tensor.datatype} of shape {list(tensor.array.shape)}"
        )
    return tensor.array


def options(parameters: dict, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """num_candidates, seed, deadline_ms from inputs (first) or request parameters."""
    chosen = {name: _scalar_input(tensors, name, parameters.get(name)) for name in ("num_candidates", "seed")}
    deadline_ms = parameters.get("deadline_ms")
    if deadline_ms is None and parameters.get("timeout") is not None:
        deadline_ms = _number(parameters["timeout"], "timeout") / 1e3  # Triton's timeout is in microseconds
    return {**chosen, "deadline_ms": deadline_ms}


def _scalar_input(tensors: dict[str, Tensor], name: str, fallback: Any) -> Any:
    tensor = tensors.get(name)
    if tensor is None:
        return fallback
    if tensor.datatype not in INTEGER_TYPES or tensor.array.size != 1:
        raise InvalidInput(
            f"{name}: expected one INT32 or INT64 value, got {tensor.datatype} {list(tensor.array.shape)}"
        )
    return int(tensor.array.reshape(-1)[0])


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name}: expected a number, got {value!r}")
    return float(value)
