"""Open Inference Protocol v2 (KServe / Triton): server and model metadata, readiness, infer.

Inputs: `observation` FP32 [B, obs_dim]; `num_candidates`, `seed` (and `deadline_ms`) as request
parameters or as INT32/INT64 inputs of one element. Triton's `timeout` parameter (microseconds,
`tritonclient`'s `timeout=`) is honoured as a deadline. Outputs: `action` [B, action_dim],
`q_value` [B] by default, `candidates` [B, K, action_dim] when asked for; a chunked model
(action horizon H > 1) answers `action` [B, H, action_dim] and `candidates` [B, K, H, action_dim].
The noise is drawn here from the seed, so it is no input. The response parameters carry
`num_candidates`, `seed`, `action_horizon` and `timing_ms_{queue,inference,total}`.

Sessions are Triton's sequences: request parameters `sequence_id` (non-zero integer or
string), `sequence_start` (a new episode; its control parameters stay with the session) and
`sequence_end` (the session ends after this answer). The control parameters
(docs/control-loop.md: `handover_weight`, `handover_scale`, `delay_steps`, `execute_steps`, `pin_delay`,
`action_low`, `action_high`, `max_action_delta`, `client_time`, `client_step`) and an FP32
input `previous_chunk` [r, action_dim] work with or without a sequence; the answer's control
values come back as response parameters (`sequence_id`, `episode`, `step`, `action_clamped`,
`clamped_steps_rate`, `handover_candidate`, `clock_server_sent`, ...).
"""

from __future__ import annotations

import importlib.metadata
import re
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
from server.control import Control, read_control
from server.deps import control_of, metrics_of, repository_of, sessions_of, settings_of
from server.errors import InvalidInput
from server.routes.raw import RawRoutes
from server.schemas import SESSION_ID_PATTERN, VERSION_LIMIT, error_responses
from server.served_model import ModelVersion
from server.sessions import Session

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
hot_routes = RawRoutes(prefix="/v2", tags=["Open Inference Protocol v2"])  # infer: on the app, first

OUTPUTS = ("action", "q_value", "candidates")
DEFAULT_OUTPUTS = ("action", "q_value")
INTEGER_TYPES = ("INT32", "INT64", "UINT32", "UINT64")
SESSION_ID = re.compile(SESSION_ID_PATTERN)


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
        "name": {"enum": ["observation", "num_candidates", "seed", "previous_chunk"]},
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
        parameters = parameters_of(header, "request")
        chosen = options(parameters, tensors)
        act = model.check_request(observation_input(tensors, model), **chosen, received=received)
        control = v2_control(parameters, tensors)
        sequence = sequence_of(parameters)
        if control is None and sequence is None and not model.limits.active:
            result, extra = await model.act(act, received), {}  # stateless: today's hot path
        else:
            session = v2_session(request, sequence, parameters, control)
            result, extra = await control_of(request).act(
                model, act, control, session, seed_given=chosen["seed"] is not None, received=received
            )
            if sequence is not None and parameters.get("sequence_end") is True:
                sessions_of(request).close(session_key(sequence), "ended")
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
                **flat_parameters(extra, sequence),
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


def sequence_of(parameters: dict) -> int | str | None:
    """Triton's `sequence_id` (a non-zero integer or a string; 0 or absent: no sequence)."""
    value = parameters.get("sequence_id")
    for flag in ("sequence_start", "sequence_end"):
        if parameters.get(flag) is not None and not isinstance(parameters[flag], bool):
            raise InvalidInput(f"{flag}: expected true or false, got {parameters[flag]!r}")
    if value is None or value == 0:
        if parameters.get("sequence_start") or parameters.get("sequence_end"):
            raise InvalidInput("sequence_start/sequence_end: need a non-zero sequence_id")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidInput(f"sequence_id: expected a non-negative integer or a string, got {value!r}")
    if isinstance(value, int) and not 0 < value < 2**64:
        raise InvalidInput(f"sequence_id: must be in [1, 2**64), got {value}")
    if isinstance(value, str) and not SESSION_ID.match(value):
        raise InvalidInput(f"sequence_id: a string id must match {SESSION_ID.pattern}, got {value!r}")
    return value


def session_key(sequence: int | str) -> str:
    return f"v2:{sequence}"


def v2_session(request: Request, sequence, parameters: dict, control: Control | None) -> Session | None:
    """The sequence's session: `sequence_start` (or first use) opens an episode with this request's options."""
    if sequence is None:
        return None
    store = sessions_of(request)
    session, created = store.get_or_open(session_key(sequence))
    start = parameters.get("sequence_start") is True
    if created or start:
        options = control.options if control is not None else {}
        if start and not created:
            store.reset(session, options)
        else:
            session.options = session.options.updated(options)
    return session


def v2_control(parameters: dict, tensors: dict[str, Tensor]) -> Control | None:
    values = dict(parameters)
    if "previous_chunk" in tensors:
        tensor = tensors["previous_chunk"]
        if tensor.datatype != "FP32":
            raise InvalidInput(f"previous_chunk: expected FP32, got {tensor.datatype}")
        values["previous_chunk"] = tensor.array
    values.pop("reset", None)  # v2 starts an episode with sequence_start
    return read_control(values)


def flat_parameters(extra: dict, sequence) -> dict[str, Any]:
    """The control answer as v2 response parameters (scalars only): `clock` -> `clock_server_sent`, ..."""
    flat: dict[str, Any] = {} if sequence is None else {"sequence_id": sequence}
    for key, value in extra.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{k}": v for k, v in value.items() if v is not None})
        elif value is not None:
            flat[key] = value
    return flat


def observation_input(tensors: dict[str, Tensor], model: ModelVersion):
    unknown = sorted(set(tensors) - {"observation", "num_candidates", "seed", "previous_chunk"})
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
