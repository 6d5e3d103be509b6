"""WebSocket policy clients (blocking and asyncio): the lowest-latency transport.

The protocol is openpi's: on connect the server sends its metadata (msgpack), then each
binary message ``{"observation": array, "num_candidates"?, "seed"?}`` gets one binary reply
``{"actions", "q_values", "server_timing"}`` (``actions`` of shape (H, D) for one observation
of a chunked model, as openpi's) or a text frame holding an error, and the connection stays
usable. Replies come back in order, so after a timed-out call the client
remembers one stale reply and discards it before reading the next call's; a dropped
connection is reopened on the next call.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import websockets
import websockets.asyncio.client
import websockets.sync.client

from clients import codec, protocol
from clients.errors import (
    ConnectionFailed,
    MfqlClientError,
    RequestTimeout,
    ServerError,
    Unauthorized,
    error_for_status,
)
from clients.protocol import Inference, ModelMetadata


def websocket_url(url: str, model: str | None) -> str:
    """``http(s)://`` or ``ws(s)://`` base URL -> the WebSocket endpoint of ``model`` (or the default)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
    path = parts.path.rstrip("/") + (f"/v1/models/{model}/ws" if model else "/")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def error_from_text(text: str) -> MfqlClientError:
    """A text frame is an error: JSON with a ``status`` is typed by it, plain text is a ServerError."""
    try:
        payload = json.loads(text)
    except ValueError:
        return ServerError(text)
    if isinstance(payload, dict) and isinstance(payload.get("status"), int):
        message = payload.get("error") or payload.get("message") or payload.get("detail") or text
        return error_for_status(payload["status"], str(message))
    return ServerError(text)


def error_from_close(exc: websockets.ConnectionClosed, url: str) -> MfqlClientError:
    """A closed connection: 1008 (policy violation, e.g. a bad API key) is Unauthorized."""
    close = exc.rcvd
    if close is not None and close.code == 1008:
        return Unauthorized(close.reason or "connection refused by the server's policy (bad API key?)")
    return ConnectionFailed(f"connection to {url} closed: {exc}")


class _WebSocketBase:
    def __init__(self, url: str, model: str | None, api_key: str | None, timeout: float):
        self.url = websocket_url(url, model)
        self.model = model
        self.timeout = timeout
        self._headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._metadata: dict = {}
        self._stale = 0  # replies still in flight for calls that already timed out

    def metadata(self) -> ModelMetadata:
        """The metadata the server sent on connect."""
        return ModelMetadata.from_native(self._metadata)

    def _read_metadata(self, message: bytes | str) -> None:
        if isinstance(message, str):
            raise error_from_text(message)
        self._metadata = codec.unpackb(message)
        self._stale = 0

    def _message(
        self, observations: Any, single: bool, num_candidates: int | None, seed: int | None, control=None
    ) -> bytes:
        batch = protocol.observation_batch(observations, single)
        return codec.packb(protocol.ws_request(batch, single, num_candidates, seed, control))

    def _answer(self, reply: bytes | str, single: bool) -> Inference:
        if isinstance(reply, str):
            raise error_from_text(reply)
        try:
            return protocol.parse_ws_reply(codec.unpackb(reply), single)
        except codec.CodecError as exc:
            raise ServerError(f"unreadable WebSocket reply: {exc}") from exc


class WebSocketPolicyClient(_WebSocketBase):
    """Blocking client: ``WebSocketPolicyClient("ws://127.0.0.1:8000", "cube-single").act(obs)``."""

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000",
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout=5.0,
    ):
        super().__init__(url, model, api_key, timeout)
        self._ws: websockets.sync.client.ClientConnection | None = None
        self._connect()

    def _connect(self) -> None:
        try:
            connection = websockets.sync.client.connect(
                self.url,
                additional_headers=self._headers,
                compression=None,
                max_size=None,
                open_timeout=self.timeout,
            )
            # websockets >= 17.1 warns about a connection not entered as a context; close() ends it.
            self._ws = connection.__enter__()
            self._read_metadata(self._ws.recv(timeout=self.timeout))
        except websockets.InvalidStatus as exc:
            self._ws = None
            body = exc.response.body or b""
            raise error_for_status(exc.response.status_code, protocol.error_message(body)) from exc
        except websockets.ConnectionClosed as exc:
            self._ws = None
            raise error_from_close(exc, self.url) from exc
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            self._ws = None
            raise ConnectionFailed(f"cannot open {self.url}: {exc!r}") from exc

    def act(self, observation: Any, num_candidates: int | None = None, seed: int | None = None, **options):
        """The action [action_dim] for one observation [obs_dim] (a chunk [H, action_dim] if chunked)."""
        return self._infer(observation, True, num_candidates, seed, **options).actions[0]

    def act_batch(
        self, observations: Any, num_candidates: int | None = None, seed: int | None = None, **options
    ):
        """Actions [B, action_dim] ([B, H, action_dim] if chunked) for observations [B, obs_dim], in one message."""
        return self._infer(observations, False, num_candidates, seed, **options).actions

    def infer(
        self,
        observations: Any,
        num_candidates: int | None = None,
        seed: int | None = None,
        *,
        timeout=None,
        control: dict | None = None,
    ) -> Inference:
        """Everything the server answers for one observation [obs_dim] or a batch [B, obs_dim].

        The connection is the server's session; ``control``: its values (docs/control-loop.md),
        e.g. ``{"reset": True}`` to start a new episode with this observation."""
        return self._infer(observations, np.ndim(observations) == 1, num_candidates, seed, timeout, control)

    def _infer(self, observations, single, num_candidates, seed, timeout=None, control=None) -> Inference:
        message = self._message(observations, single, num_candidates, seed, control)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if self._ws is None:
            self._connect()
        try:
            self._ws.send(message)
            while True:
                reply = self._ws.recv(timeout=max(deadline - time.monotonic(), 0.0))
                if self._stale == 0:
                    return self._answer(reply, single)
                self._stale -= 1
        except TimeoutError as exc:
            self._stale += 1
            raise RequestTimeout(f"no reply from {self.url} in time") from exc
        except websockets.ConnectionClosed as exc:
            self._ws = None
            raise error_from_close(exc, self.url) from exc

    def health(self) -> bool:
        """True when the connection answers a ping within the timeout."""
        if self._ws is None:
            return False
        try:
            return self._ws.ping().wait(self.timeout)
        except websockets.ConnectionClosed:
            return False

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> WebSocketPolicyClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class AsyncWebSocketPolicyClient(_WebSocketBase):
    """The asyncio twin: ``client = await AsyncWebSocketPolicyClient.open(url, model)``."""

    def __init__(
        self, url: str, model: str | None = None, *, api_key: str | None = None, timeout: float = 5.0
    ):
        super().__init__(url, model, api_key, timeout)
        self._ws: websockets.asyncio.client.ClientConnection | None = None

    @classmethod
    async def open(cls, url: str, model: str | None = None, **options) -> AsyncWebSocketPolicyClient:
        client = cls(url, model, **options)
        await client._connect()
        return client

    async def _connect(self) -> None:
        try:
            self._ws = await asyncio.wait_for(
                websockets.asyncio.client.connect(
                    self.url, additional_headers=self._headers, compression=None, max_size=None
                ),
                self.timeout,
            )
            self._read_metadata(await asyncio.wait_for(self._ws.recv(), self.timeout))
        except websockets.InvalidStatus as exc:
            self._ws = None
            body = exc.response.body or b""
            raise error_for_status(exc.response.status_code, protocol.error_message(body)) from exc
        except websockets.ConnectionClosed as exc:
            self._ws = None
            raise error_from_close(exc, self.url) from exc
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
            self._ws = None
            raise ConnectionFailed(f"cannot open {self.url}: {exc!r}") from exc

    async def metadata(self) -> ModelMetadata:
        """The metadata the server sent on connect (awaitable, like the HTTP client's)."""
        return super().metadata()

    async def act(
        self, observation: Any, num_candidates: int | None = None, seed: int | None = None, **options
    ):
        return (await self._infer(observation, True, num_candidates, seed, **options)).actions[0]

    async def act_batch(
        self, observations: Any, num_candidates: int | None = None, seed: int | None = None, **options
    ):
        return (await self._infer(observations, False, num_candidates, seed, **options)).actions

    async def infer(
        self, observations: Any, num_candidates: int | None = None, seed: int | None = None, *, timeout=None
    ) -> Inference:
        return await self._infer(observations, np.ndim(observations) == 1, num_candidates, seed, timeout)

    async def _infer(self, observations, single, num_candidates, seed, timeout=None) -> Inference:
        message = self._message(observations, single, num_candidates, seed)
        if self._ws is None:
            await self._connect()
        try:
            return await asyncio.wait_for(
                self._exchange(message, single), self.timeout if timeout is None else timeout
            )
        except asyncio.TimeoutError as exc:  # not the builtin TimeoutError before Python 3.11
            self._stale += 1
            raise RequestTimeout(f"no reply from {self.url} in time") from exc
        except websockets.ConnectionClosed as exc:
            self._ws = None
            raise error_from_close(exc, self.url) from exc

    async def _exchange(self, message: bytes, single: bool) -> Inference:
        await self._ws.send(message)
        while True:
            reply = await self._ws.recv()
            if self._stale == 0:
                return self._answer(reply, single)
            self._stale -= 1

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def __aenter__(self) -> AsyncWebSocketPolicyClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()
