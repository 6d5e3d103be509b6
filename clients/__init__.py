"""mfql clients: talk to an mfql server (REST, Open Inference Protocol v2, WebSocket).

Light on purpose (numpy, httpx, msgpack, websockets) and independent of ``training``,
``exporters`` and ``server``. Start with ``PolicyClient`` or ``RemotePolicy``.
"""

from clients.connect import open_async_client, open_client
from clients.errors import (
    ConnectionFailed,
    DeadlineExceeded,
    DimensionMismatch,
    InvalidInput,
    MfqlClientError,
    ModelNotFound,
    Overloaded,
    RequestTimeout,
    ServerError,
    Unauthorized,
)
from clients.http_client import AsyncPolicyClient, PolicyClient, RetryPolicy
from clients.protocol import Inference, ModelMetadata
from clients.remote_policy import RemotePolicy
from clients.websocket_client import AsyncWebSocketPolicyClient, WebSocketPolicyClient

__all__ = [
    "AsyncPolicyClient",
    "AsyncWebSocketPolicyClient",
    "ConnectionFailed",
    "DeadlineExceeded",
    "DimensionMismatch",
    "Inference",
    "InvalidInput",
    "MfqlClientError",
    "ModelMetadata",
    "ModelNotFound",
    "Overloaded",
    "PolicyClient",
    "RemotePolicy",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "Unauthorized",
    "WebSocketPolicyClient",
    "open_async_client",
    "open_client",
]
