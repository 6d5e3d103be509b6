"""Open the right client for a protocol name, and the connection options the CLIs share."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

from clients.http_client import DEFAULT_RETRY, AsyncPolicyClient, PolicyClient, RetryPolicy
from clients.websocket_client import AsyncWebSocketPolicyClient, WebSocketPolicyClient

Protocol = Literal["rest", "ws", "v2"]
PROTOCOLS = ("rest", "ws", "v2")
API_KEY_ENV = "MFQL_API_KEY"


def open_client(
    url: str,
    model: str | None,
    protocol: Protocol = "rest",
    *,
    api_key: str | None = None,
    timeout: float = 5.0,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> PolicyClient | WebSocketPolicyClient:
    """A blocking client speaking ``protocol`` ("rest", "ws" or "v2") to ``url``."""
    if protocol == "ws":
        return WebSocketPolicyClient(url, model, api_key=api_key, timeout=timeout)
    return PolicyClient(
        url, model, protocol=_http_protocol(protocol), api_key=api_key, timeout=timeout, retry=retry
    )


async def open_async_client(
    url: str,
    model: str | None,
    protocol: Protocol = "rest",
    *,
    api_key: str | None = None,
    timeout: float = 5.0,
    retry: RetryPolicy = DEFAULT_RETRY,
    max_connections: int = 100,
) -> AsyncPolicyClient | AsyncWebSocketPolicyClient:
    """The asyncio twin of :func:`open_client` (a WebSocket client holds one connection)."""
    if protocol == "ws":
        return await AsyncWebSocketPolicyClient.open(url, model, api_key=api_key, timeout=timeout)
    return AsyncPolicyClient(
        url,
        model,
        protocol=_http_protocol(protocol),
        api_key=api_key,
        timeout=timeout,
        retry=retry,
        max_connections=max_connections,
    )


def _http_protocol(protocol: str) -> Literal["rest", "v2"]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return "v2" if protocol == "v2" else "rest"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--model", help="model name (default: the server's default model; required for v2)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="rest")
    parser.add_argument(
        "--api-key-file", type=Path, help=f"file holding the API key (else ${API_KEY_ENV}, else none)"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request, retries included")


def api_key_from(args: argparse.Namespace) -> str | None:
    """The key from ``--api-key-file`` (stripped), else ``$MFQL_API_KEY``; never from the command line."""
    if args.api_key_file is not None:
        return args.api_key_file.read_text().strip()
    return os.environ.get(API_KEY_ENV) or None
