"""mfql clients: talk to an mfql server (REST, Open Inference Protocol v2, WebSocket).

Light on purpose (numpy, httpx, msgpack, websockets) and independent of ``training``,
``exporters`` and ``server``. Start with ``PolicyClient`` or ``RemotePolicy``.
"""

# Names resolve on first use (PEP 562), so `import clients.codec` (the wire codec the
# server shares) needs neither httpx nor websockets: a serve-only install has neither.
_EXPORTS = {
    "open_async_client": "clients.connect",
    "open_client": "clients.connect",
    "ConnectionFailed": "clients.errors",
    "DeadlineExceeded": "clients.errors",
    "DimensionMismatch": "clients.errors",
    "InvalidInput": "clients.errors",
    "MfqlClientError": "clients.errors",
    "ModelNotFound": "clients.errors",
    "Overloaded": "clients.errors",
    "RequestTimeout": "clients.errors",
    "ServerError": "clients.errors",
    "Unauthorized": "clients.errors",
    "AsyncPolicyClient": "clients.http_client",
    "PolicyClient": "clients.http_client",
    "RetryPolicy": "clients.http_client",
    "Inference": "clients.protocol",
    "ModelMetadata": "clients.protocol",
    "RemotePolicy": "clients.remote_policy",
    "AsyncWebSocketPolicyClient": "clients.websocket_client",
    "WebSocketPolicyClient": "clients.websocket_client",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clients' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


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
