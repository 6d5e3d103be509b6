"""Typed client errors: each carries the server's own message and, for HTTP, the status code.

Every error a client raises is an :class:`MfqlClientError`, so ``except MfqlClientError``
catches all of them; the subclasses say what a caller can do about it (fix the input,
fix the key, back off, give up on this control step).
"""

from __future__ import annotations


class MfqlClientError(Exception):
    """Base class: ``message`` is the server's (or the client's) explanation, ``status`` the HTTP code."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(f"{message} (HTTP {status})" if status is not None else message)
        self.message = message
        self.status = status


class InvalidInput(MfqlClientError):
    """The request was refused as malformed (400/422), or refused before sending (wrong shape, NaN)."""


class DimensionMismatch(InvalidInput):
    """An observation's size differs from the model's ``obs_dim``; raised before anything is sent."""


class Unauthorized(MfqlClientError):
    """The API key is missing or wrong (401/403)."""


class ModelNotFound(MfqlClientError):
    """No such model or version on this server (404)."""


class Overloaded(MfqlClientError):
    """The server's queue is full or it is not ready (503/429); ``retry_after`` is its hint in seconds."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, status)
        self.retry_after = retry_after


class DeadlineExceeded(MfqlClientError):
    """The server dropped the request because its ``deadline_ms`` had passed (504)."""


class ServerError(MfqlClientError):
    """The server failed (5xx), or answered with something the client cannot read."""


class ConnectionFailed(MfqlClientError):
    """The server could not be reached (refused, reset, DNS); retried like a 503."""


class RequestTimeout(MfqlClientError):
    """No answer within the client's timeout. Not retried: the answer would arrive too late anyway."""


def error_for_status(status: int, message: str, retry_after: float | None = None) -> MfqlClientError:
    """The typed error for an HTTP error status, carrying the server's message."""
    if status in (503, 429):
        return Overloaded(message, status, retry_after)
    if status in (401, 403):
        return Unauthorized(message, status)
    if status == 404:
        return ModelNotFound(message, status)
    if status == 504:
        return DeadlineExceeded(message, status)
    if 400 <= status < 500:
        return InvalidInput(message, status)
    return ServerError(message, status)
