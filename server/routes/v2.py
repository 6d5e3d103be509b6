"""Open Inference Protocol v2 (KServe / Triton): server and model metadata, readiness, infer.

Inputs: `observation` FP32 [B, obs_dim]; `num_candidates`, `seed` (and `deadline_ms`) as request
parameters or as INT32/INT64 inputs of one element. Triton's `timeout` parameter (microseconds,
`tritonclient`'s `timeout=`) is honoured as a deadline. Outputs: `action` [B, action_dim],
`q_value` [B] by default, `candidates` [B, K, action_dim] when asked for. The response
parameters carry `num_candidates`, `seed` and `timing_ms_{queue,inference,total}`.
"""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

from fastapi import APIRouter, Request, Response

from server.binary_tensors import (
    HEADER_LENGTH,
    Tensor,
    decode_content,
    encode_response,
    parse_inputs,
    requested_outputs,
    split_body,
)
from server.deps import MetricsDep, RepositoryDep, SettingsDep
from server.errors import InvalidInput
from server.served_model import ModelVersion

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

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
    obs, act = model.obs_dim, model.action_dim
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": platform,
        "inputs": [{"name": "observation", "datatype": "FP32", "shape": [-1, obs]}],
        "outputs": [
            {"name": "action", "datatype": "FP32", "shape": [-1, act]},
            {"name": "q_value", "datatype": "FP32", "shape": [-1]},
            {"name": "candidates", "datatype": "FP32", "shape": [-1, -1, act]},
        ],
    }


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def get_model_metadata(
    name: str, repository: RepositoryDep, settings: SettingsDep, version: str | None = None
) -> dict:
    model = repository.resolve(name, version)
    platform = "pytorch_libtorch" if settings.backend == "torchscript" else "onnxruntime_onnx"
    return model_metadata(model, repository.versions(name), platform)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, repository: RepositoryDep, version: str | None = None) -> dict:
    model = repository.resolve(name, version)
    return {"name": model.name, "version": str(model.version), "ready": True}


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(
    name: str,
    request: Request,
    repository: RepositoryDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    version: str | None = None,
) -> Response:
    """JSON tensors, or the binary tensor data extension (`Inference-Header-Content-Length`)."""
    received = time.perf_counter()
    with metrics.track("v2") as tracked:
        model = repository.resolve(name, version)
        tracked.model = model.name
        body = decode_content(
            await request.body(), request.headers.get("content-encoding"), settings.max_request_bytes
        )
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        tensors = parse_inputs(header, binary)
        outputs = requested_outputs(header, OUTPUTS, DEFAULT_OUTPUTS)
        act = model.check_request(
            observation_input(tensors, model),
            **options(header.get("parameters") or {}, tensors),
            received=received,
        )
        result = await model.act(act, received)
        metrics.record_result(model.name, result.num_candidates, result.q_values)
        values = {"action": result.actions, "q_value": result.q_values, "candidates": result.candidates}
        response_header: dict[str, Any] = {
            "model_name": model.name,
            "model_version": str(model.version),
            "parameters": {
                "num_candidates": result.num_candidates,
                "seed": result.seed,
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
