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

A connection is a session (server/sessions.py): requests without a seed draw from its seed
stream, and it remembers the last chunk for hand-overs and action limits. `{"reset": true}`
(alone, or beside an observation) starts a new episode, and the options it carries
(docs/control-loop.md) stay with the session; a reset alone is answered `{"reset": true,
"session_id", "episode", "step", "seed"}`. Control keys beside an observation apply to that
message. openpi's client sends none of them and is served exactly as before.

The msgpack-numpy codec is the clients package's (`clients.codec`: msgpack and numpy only),
so the wire format exists once, as openpi's server imports its client package's codec.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from clients import codec
from server.auth import refuse_websocket
from server.control import ControlLoop, read_control
from server.deps import control_of, metrics_of, repository_of, sessions_of
from server.errors import InvalidInput, MalformedRequest, ServingError
from server.metrics import ServerMetrics
from server.repository import ModelRepository
from server.served_model import ActResult
from server.sessions import Session, SessionStore

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
    sessions = sessions_of(websocket)
    try:
        session = sessions.open(f"ws:{uuid.uuid4().hex}", pinned=True)  # the connection is the session
    except ServingError as refusal:
        response = JSONResponse({"error": refusal.message}, refusal.status, refusal.headers)
        await refuse_websocket(websocket, response, refusal.message)
        return
    name = model.name
    try:
        await websocket.accept()
        await websocket.send_bytes(codec.packb({**model.describe(), "versions": _versions(repository, name)}))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            reply = await answer(
                message, name, repository, metrics, Connection(sessions, session, control_of(websocket))
            )
            if isinstance(reply, str):
                await websocket.send_text(reply)
            else:
                await websocket.send_bytes(reply)
    except (WebSocketDisconnect, OSError, RuntimeError):  # the client left mid-answer: nothing to tell it
        return
    finally:
        sessions.close(session.key, "disconnected")


@dataclass(frozen=True)
class Connection:
    """What one WebSocket connection answers with: its session and the app's control loop."""

    sessions: SessionStore
    session: Session
    control: ControlLoop


async def answer(
    message: dict, name: str, repository: ModelRepository, metrics: ServerMetrics, connection: Connection
) -> bytes | str:
    """The reply to one message: msgpack bytes, or an error text frame."""
    received = time.perf_counter()
    try:
        with metrics.track("ws") as tracked:
            request = _decode(message)
            control = read_control(request)
            session = connection.session
            if control is not None and control.reset:
                connection.sessions.reset(session, control.options)
                if "observation" not in request:
                    return codec.packb({"reset": True, **session.describe()})
            model = repository.resolve(name, request.get("version"))
            tracked.model = model.name
            act = model.check_request(
                request["observation"],
                num_candidates=request.get("num_candidates"),
                seed=request.get("seed"),
                deadline_ms=request.get("deadline_ms"),
                received=received,
            )
            if act.observations.shape[0] != 1 and control is None:
                session = None  # a batch is many robots' observations, not this session's step
            result, extra = await connection.control.act(
                model, act, control, session, seed_given=request.get("seed") is not None, received=received
            )
            metrics.record_result(result)
            return codec.packb({**ws_reply(result, act.single), **extra})
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
    if not isinstance(request, dict) or ("observation" not in request and request.get("reset") is not True):
        raise InvalidInput(
            "observation: the message must be a map with an 'observation' array (or 'reset': true)"
        )
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
