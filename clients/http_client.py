"""HTTP policy clients (sync and asyncio) for the native REST and the Open Inference Protocol v2.

One ``httpx`` connection pool per client, so a control loop pays the TCP handshake once.
A call's ``timeout`` bounds the whole call, retries and back-off included. 503/429 and
connection failures are retried with full-jitter exponential back-off; a ``Retry-After``
is honoured: never retried sooner, and given up at once when it asks for longer than
``RetryPolicy.max_backoff``. Read timeouts are never retried: for a robot the answer
would come too late.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from clients import protocol
from clients.errors import (
    ConnectionFailed,
    MfqlClientError,
    ModelNotFound,
    Overloaded,
    RequestTimeout,
    ServerError,
    error_for_status,
)
from clients.protocol import Inference, ModelMetadata

HttpProtocol = Literal["rest", "v2"]


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries on 503/429 and connection failures."""

    max_retries: int = 3  # retries after the first attempt; 0 disables retrying
    initial_backoff: float = 0.05  # seconds: upper bound of the first jittered wait
    max_backoff: float = 1.0  # seconds: longest single wait; a longer Retry-After means give up

    def wait(self, retry: int, error: MfqlClientError, rng: random.Random) -> float | None:
        """Seconds to wait before retry number ``retry`` (0-based), or None to raise ``error``."""
        if retry >= self.max_retries or not isinstance(error, (Overloaded, ConnectionFailed)):
            return None
        backoff = rng.uniform(0.0, min(self.max_backoff, self.initial_backoff * 2**retry))
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None:
            return backoff
        return None if retry_after > self.max_backoff else max(retry_after, backoff)


DEFAULT_RETRY = RetryPolicy()


class _HttpPolicyBase:
    """What the sync and async clients share: routes, request bodies, answers, errors, retry timing."""

    def __init__(
        self,
        url: str,
        model: str | None,
        protocol_name: HttpProtocol,
        version: str | None,
        api_key: str | None,
        timeout: float,
        retry: RetryPolicy,
    ):
        if protocol_name not in ("rest", "v2"):
            raise ValueError(f"protocol must be 'rest' or 'v2', got {protocol_name!r}")
        if protocol_name == "v2" and not model:
            raise ValueError("the v2 protocol needs a model name")
        self.url = url.rstrip("/")
        self.model = model
        self.protocol = protocol_name
        self.version = None if version is None else str(version)
        self.timeout = timeout
        self.retry = retry
        self._rng = random.Random()
        self._headers = {"User-Agent": "mfql-client"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def _act_request(
        self,
        observations: Any,
        single: bool,
        num_candidates: int | None,
        seed: int | None,
        deadline_ms: float | None,
        control: dict | None = None,
    ) -> tuple[str, dict]:
        batch = protocol.observation_batch(observations, single)
        if self.protocol == "v2":
            body = protocol.v2_infer_body(batch, num_candidates, seed, deadline_ms, control)
            return protocol.v2_infer_path(self.model, self.version), body
        body = protocol.rest_act_body(batch, single, num_candidates, seed, self.version, deadline_ms, control)
        return protocol.rest_act_path(self.model), body

    def _parse_act(self, response: httpx.Response) -> Inference:
        payload = _json(response)
        return protocol.parse_v2_infer(payload) if self.protocol == "v2" else protocol.parse_rest_act(payload)

    def _metadata_path(self, model: str) -> str:
        if self.protocol == "v2":
            return f"/v2/models/{model}/versions/{self.version}" if self.version else f"/v2/models/{model}"
        return f"/v1/models/{model}"

    def _parse_metadata(self, response: httpx.Response) -> ModelMetadata:
        payload = _json(response)
        return ModelMetadata.from_v2(payload) if self.protocol == "v2" else ModelMetadata.from_native(payload)

    def _default_model(self, response: httpx.Response) -> str:
        """The model ``/v1/act`` serves, from the ``GET /v1/models`` listing."""
        payload = _json(response)
        models = payload.get("models") or []
        default = payload.get("default") or next((m["name"] for m in models if m.get("default")), None)
        if default is None and len(models) == 1:
            default = models[0]["name"]
        if default is None:
            names = [m.get("name") for m in models]
            raise ModelNotFound(
                f"no model name given and the server has no single default model (models: {names})"
            )
        return str(default)

    def _budget(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _outcome(self, response: httpx.Response) -> MfqlClientError | None:
        if response.is_success:
            return None
        message = protocol.error_message(response.content)
        return error_for_status(response.status_code, message, _retry_after(response))

    def _next_wait(self, retry: int, error: MfqlClientError, deadline: float) -> float:
        """Seconds to sleep before retrying; raises ``error`` when it must not be retried."""
        wait = self.retry.wait(retry, error, self._rng)
        if wait is None or time.monotonic() + wait >= deadline:
            raise error
        return wait


class PolicyClient(_HttpPolicyBase):
    """Blocking client: ``PolicyClient("http://127.0.0.1:8000", "cube-single").act(obs) -> action``."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        model: str | None = None,
        *,
        protocol: HttpProtocol = "rest",
        version: str | int | None = None,
        api_key: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ):
        super().__init__(url, model, protocol, version, api_key, timeout, retry)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout)

    def act(
        self, observation: Any, num_candidates: int | None = None, seed: int | None = None, **options
    ) -> np.ndarray:
        """The action [action_dim] for one observation [obs_dim], or the chunk [H, action_dim] of a
        chunked model. ``options``: see :meth:`infer`."""
        return self._infer(observation, True, num_candidates, seed, **options).actions[0]

    def act_batch(
        self, observations: Any, num_candidates: int | None = None, seed: int | None = None, **options
    ) -> np.ndarray:
        """Actions [B, action_dim] ([B, H, action_dim] if chunked) for observations [B, obs_dim], in one request."""
        return self._infer(observations, False, num_candidates, seed, **options).actions

    def infer(
        self,
        observations: Any,
        num_candidates: int | None = None,
        seed: int | None = None,
        *,
        deadline_ms: float | None = None,
        timeout: float | None = None,
        control: dict | None = None,
    ) -> Inference:
        """Everything the server answers for one observation [obs_dim] or a batch [B, obs_dim].

        ``deadline_ms``: the server drops the request (504) if it cannot start it in time;
        ``timeout``: seconds for this call, retries included (default: the client's);
        ``control``: session and control-loop values (docs/control-loop.md).
        """
        return self._infer(
            observations, np.ndim(observations) == 1, num_candidates, seed, deadline_ms, timeout, control
        )

    def _infer(
        self, observations, single, num_candidates, seed, deadline_ms=None, timeout=None, control=None
    ) -> Inference:
        path, body = self._act_request(observations, single, num_candidates, seed, deadline_ms, control)
        return self._parse_act(self._request("POST", path, body, timeout))

    def metadata(self, model: str | None = None) -> ModelMetadata:
        """Dims, bounds and limits of ``model`` (default: this client's model, else the server's default)."""
        name = model or self.model or self._default_model(self._request("GET", "/v1/models"))
        return self._parse_metadata(self._request("GET", self._metadata_path(name)))

    def health(self) -> bool:
        """True when the server reports ready; False when it is not ready or cannot be reached."""
        try:
            return self._http.get("/v2/health/ready").is_success
        except httpx.TransportError:
            return False

    def wait_until_ready(self, timeout: float = 30.0, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while not self.health():
            if time.monotonic() > deadline:
                raise ConnectionFailed(f"server at {self.url} not ready after {timeout} s")
            time.sleep(interval)

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        deadline = self._budget(timeout)
        retry = 0
        while True:
            try:
                response = self._http.request(method, path, json=body, timeout=_remaining(deadline))
                error = self._outcome(response)
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"no answer from {self.url}{path} in time: {exc!r}") from exc
            except httpx.TransportError as exc:
                error = ConnectionFailed(f"cannot reach {self.url}{path}: {exc!r}")
            if error is None:
                return response
            time.sleep(self._next_wait(retry, error, deadline))
            retry += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class AsyncPolicyClient(_HttpPolicyBase):
    """The asyncio twin of :class:`PolicyClient`: same arguments, every call awaitable."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        model: str | None = None,
        *,
        protocol: HttpProtocol = "rest",
        version: str | int | None = None,
        api_key: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_connections: int = 100,
    ):
        super().__init__(url, model, protocol, version, api_key, timeout, retry)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, limits=limits
        )

    async def act(
        self, observation: Any, num_candidates: int | None = None, seed: int | None = None, **options
    ) -> np.ndarray:
        return (await self._infer(observation, True, num_candidates, seed, **options)).actions[0]

    async def act_batch(
        self, observations: Any, num_candidates: int | None = None, seed: int | None = None, **options
    ) -> np.ndarray:
        return (await self._infer(observations, False, num_candidates, seed, **options)).actions

    async def infer(
        self,
        observations: Any,
        num_candidates: int | None = None,
        seed: int | None = None,
        *,
        deadline_ms: float | None = None,
        timeout: float | None = None,
    ) -> Inference:
        single = np.ndim(observations) == 1
        return await self._infer(observations, single, num_candidates, seed, deadline_ms, timeout)

    async def _infer(
        self, observations, single, num_candidates, seed, deadline_ms=None, timeout=None
    ) -> Inference:
        path, body = self._act_request(observations, single, num_candidates, seed, deadline_ms)
        return self._parse_act(await self._request("POST", path, body, timeout))

    async def metadata(self, model: str | None = None) -> ModelMetadata:
        name = model or self.model or self._default_model(await self._request("GET", "/v1/models"))
        return self._parse_metadata(await self._request("GET", self._metadata_path(name)))

    async def health(self) -> bool:
        try:
            return (await self._http.get("/v2/health/ready")).is_success
        except httpx.TransportError:
            return False

    async def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        deadline = self._budget(timeout)
        retry = 0
        while True:
            try:
                response = await self._http.request(method, path, json=body, timeout=_remaining(deadline))
                error = self._outcome(response)
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"no answer from {self.url}{path} in time: {exc!r}") from exc
            except httpx.TransportError as exc:
                error = ConnectionFailed(f"cannot reach {self.url}{path}: {exc!r}")
            if error is None:
                return response
            await asyncio.sleep(self._next_wait(retry, error, deadline))
            retry += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncPolicyClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


def _remaining(deadline: float) -> float:
    # httpx refuses a zero timeout; a tiny one still fails fast with a clear TimeoutException.
    return max(deadline - time.monotonic(), 1e-3)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return None if value is None else max(float(value), 0.0)
    except ValueError:  # an HTTP date: treat as no hint rather than parse clocks
        return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ServerError(f"expected JSON from {response.url}, got: {response.text[:200]!r}") from exc
