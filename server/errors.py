"""What a request can be refused for. Each protocol turns a ServingError into its own error reply.

REST and v2 answer `{"error": message}` with the status (and `Retry-After` on 503); the
WebSocket sends a text frame `{"status": ..., "error": ...}` and keeps the connection open.
"""

from __future__ import annotations


class ServingError(Exception):
    """A request the server refuses; `message` says what was expected and what was received."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {}


class MalformedRequest(ServingError):
    """The body cannot be read at all (not JSON, broken binary framing)."""

    status = 400


class InvalidInput(ServingError):
    """Readable, but a value is wrong: observation shape, NaN, num_candidates out of range, seed."""

    status = 422


class Unauthorized(ServingError):
    status = 401

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="mfql"'}


class NotFound(ServingError):
    """Unknown model or version; the message lists what is available."""

    status = 404


class PayloadTooLarge(ServingError):
    status = 413


class Unavailable(ServingError):
    """Queue full, no ready version, or shutting down: retry after `retry_after` seconds (elsewhere)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DeadlineExceeded(ServingError):
    """The request's deadline passed before inference started; it was dropped, nothing was computed."""

    status = 504


class InferenceFailed(ServingError):
    """The runtime raised on a batch; every request of that batch gets this."""

    status = 500


class BundleError(RuntimeError):
    """A bundle on disk cannot serve: incomplete, tampered with, or not computing what it recorded."""


class SessionsFull(Unavailable):
    """`--max-sessions` sessions are open: a new one is refused until one ends or expires."""


class UnknownSession(NotFound):
    """A session id that is not open (never opened, ended, or expired after `--session-idle-s`)."""
