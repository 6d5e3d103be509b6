"""openpi-compatible WebSocket: `ws://host:port/v1/models/{name}/ws`, and `ws://host:port/` for the default model.

On connect the server sends the model's metadata (msgpack, the same dict as
`GET /v1/models/{name}`). Each binary message `{"observation": [obs_dim] or [B, obs_dim],
"num_candidates"?, "seed"?, "deadline_ms"?, "version"?}` (other keys, such as an openpi
observation's images, are ignored) gets one binary reply `{"actions", "q_values",
"action_horizon", "num_candidates", "seed", "model", "version", "server_timing"}`. A chunked model
(action horizon H > 1) answers one observation with `"actions"` of shape (H, action_dim),
openpi's own convention, so `openpi_client.action_chunk_broker.ActionChunkBroker(policy, H)`
hands them out one per step (it slices every array of the reply on its first axis: the
reply's other values are scalars); a batch gets (B, H, action_dim). An error is a text frame
`{"status": <HTTP-like code>, "error": "..."}` and the connection stays usable. Messages on
one connection are answered in order; the newest version serves each message, so a
long-lived connection follows hot reloads.

The msgpack-numpy codec is the clients package's (`clients.codec`: msgpack and numpy only),
so the wire format exists once, as openpi's server imports its client package's codec.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from clients import codec
from server.auth import refuse_websocket
from server.deps import metrics_of, repository_of
from server.errors import InvalidInput, MalformedRequest, ServingError
from server.metrics import ServerMetrics
from server.repository import ModelRepository
from server.served_model import ActResult

logger = logging.getLogger("mfql.websocket")
router = APIRouter(tags=["WebSocket (openpi protocol)"])


@router.websocket("/v1/models/{name}/ws")
async def model_socket(websocket: WebSocket, name: str) -> None:
    await serve_socket(websocket, name, repository_of(websocket), metrics_of(websocket))


@router.websocket("/")
async def default_socket(websocket: WebSocket) -> None:
    await serve_socket(websocket, None, repository_of(websocket), metrics_of(websocket))


async def serve_socket(
    websocket: WebSocket, name: str | None, repository: ModelRepository, metrics: ServerMetrics
) -> None:
    try:
        model = repository.resolve(name)
    except ServingError as refusal:
        response = JSONResponse({"error": refusal.message}, refusal.status, refusal.headers)
        await refuse_websocket(websocket, response, refusal.message)
        return
    name = model.name
    await websocket.accept()
    try:
        await websocket.send_bytes(codec.packb({**model.describe(), "versions": _versions(repository, name)}))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            reply = await answer(message, name, repository, metrics)
            if isinstance(reply, str):
                await websocket.send_text(reply)
            else:
                await websocket.send_bytes(reply)
    except (WebSocketDisconnect, OSError, RuntimeError):  # the client left mid-answer: nothing to tell it
        return


async def answer(
    message: dict, name: str, repository: ModelRepository, metrics: ServerMetrics
) -> bytes | str:
    """The reply to one message: msgpack bytes, or an error text frame."""
    received = time.perf_counter()
    try:
        with metrics.track("ws") as tracked:
            request = _decode(message)
            model = repository.resolve(name, request.get("version"))
            tracked.model = model.name
            act = model.check_request(
                request["observation"],
                num_candidates=request.get("num_candidates"),
                seed=request.get("seed"),
                deadline_ms=request.get("deadline_ms"),
                received=received,
            )
            result = await model.act(act, received)
            metrics.record_result(result)
            return codec.packb(ws_reply(result, act.single))
    except ServingError as error:
        return json.dumps({"status": error.status, "error": error.message})


def _decode(message: dict) -> dict[str, Any]:
    data = message.get("bytes")
    if data is None:
        raise MalformedRequest("send msgpack binary frames (openpi's msgpack-numpy encoding), not text")
    try:
        request = codec.unpackb(data)
    except codec.CodecError as exc:
        raise MalformedRequest(str(exc)) from exc
    if not isinstance(request, dict) or "observation" not in request:
        raise InvalidInput("observation: the message must be a map with an 'observation' array")
    return request


def ws_reply(result: ActResult, single: bool) -> dict[str, Any]:
    timing = result.timing_ms
    return {
        "actions": result.actions[0] if single else result.actions,
        "q_values": result.q_values[0] if single else result.q_values,
        "action_horizon": result.action_horizon,
        "num_candidates": result.num_candidates,
        "seed": result.seed,
        "model": result.model,
        "version": str(result.version),
        # our names (as REST's timing_ms) plus openpi's `infer_ms`, which openpi's tools print
        "server_timing": {**timing, "infer_ms": timing["inference"]},
    }


def _versions(repository: ModelRepository, name: str) -> list[str]:
    return [str(v) for v in repository.versions(name)]
