"""Request body size limit: a body larger than `max_request_bytes` gets 413 before anything parses it.

A declared Content-Length is checked up front (the HTTP server never delivers more than it
declares). A chunked body, which declares nothing, is read here up to the limit and then
handed on. WebSocket messages are capped by uvicorn's `ws_max_size`, set to the same limit
in `cli.py`.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(f"{declared} bytes", scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client disconnected
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(f"more than {self.max_bytes} bytes", scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, received: str, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body of {received} exceeds the limit of {self.max_bytes} bytes"
        await JSONResponse({"error": message}, 413)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
