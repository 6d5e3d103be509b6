"""Optional API keys (`--api-key-file`): every HTTP route and WebSocket but health and metrics needs one.

Keys travel as `Authorization: Bearer <key>` (what mfql's HTTP clients send) or
`Authorization: Api-Key <key>` (what openpi's and mfql's WebSocket clients send). A refused
HTTP request gets 401 `{"error": ...}`; a refused WebSocket handshake gets the same 401
response when the server supports denial responses, else a close with code 1008.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from server.errors import Unauthorized

# Load balancers and Prometheus probe these without credentials.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/healthz", "/metrics"})
SCHEMES = ("bearer", "api-key")


def read_api_keys(path: Path) -> frozenset[str]:
    """One key per line; blank lines and `#` comments ignored. An empty file is refused."""
    keys = frozenset(
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    if not keys:
        raise ValueError(f"api_key_file {path} holds no key")
    return keys


def presented_key(headers: Headers) -> str | None:
    scheme, _, key = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() not in SCHEMES or not key.strip():
        return None
    return key.strip()


def check_key(keys: frozenset[str], key: str | None) -> None:
    if key is None:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' or 'Authorization: Api-Key <key>'"
        )
    # compare against every key without stopping early, so timing tells nothing about which matched
    matches = [hmac.compare_digest(key.encode(), known.encode()) for known in keys]
    if not any(matches):
        raise Unauthorized("invalid API key")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: frozenset[str]):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            check_key(self.keys, presented_key(Headers(scope=scope)))
        except Unauthorized as refusal:
            response = JSONResponse({"error": refusal.message}, refusal.status, refusal.headers)
            if scope["type"] == "http":
                await response(scope, receive, send)
            else:
                await refuse_websocket(WebSocket(scope, receive, send), response, refusal.message)
            return
        await self.app(scope, receive, send)


async def refuse_websocket(websocket: WebSocket, response: JSONResponse, reason: str) -> None:
    """Answer the handshake with `response` where the server allows it, else close with 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008, reason=reason[:120])
