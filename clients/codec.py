"""The msgpack wire codec shared by the server and every client.

Arrays travel as msgpack maps in the layout the openpi-client package uses
(``{b"__ndarray__": True, b"data": bytes, b"dtype": str, b"shape": list}``), so an
``openpi_client.websocket_client_policy.WebsocketClientPolicy`` talks to our WebSocket
endpoint unchanged. Only plain numeric dtypes are accepted: object, void and complex arrays
are refused on both sides, so decoding never executes anything (no pickle fallback).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_REFUSED_KINDS = frozenset("VOc")


class CodecError(ValueError):
    """A message could not be encoded or decoded; the text says what was wrong."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise CodecError(f"arrays of dtype {obj.dtype} cannot be sent; use a numeric dtype")
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise CodecError(f"cannot encode an object of type {type(obj).__name__}")


def _decode_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            if dtype.kind in _REFUSED_KINDS:
                raise CodecError(f"arrays of dtype {dtype} are not accepted")
            shape = tuple(int(n) for n in obj[b"shape"])
            return np.frombuffer(obj[b"data"], dtype=dtype).reshape(shape)
        except CodecError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"malformed array in message: {exc}") from exc
    if b"__npgeneric__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            if dtype.kind in _REFUSED_KINDS:
                raise CodecError(f"scalars of dtype {dtype} are not accepted")
            return dtype.type(obj[b"data"])
        except CodecError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"malformed scalar in message: {exc}") from exc
    return obj


def packb(obj: Any) -> bytes:
    """Encode a message (dicts, lists, numbers, strings, numpy arrays) to msgpack bytes."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode msgpack bytes; raise :class:`CodecError` with a readable reason on bad input."""
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, raw=False, strict_map_key=False)
    except CodecError:
        raise
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise CodecError(f"malformed msgpack message: {exc}") from exc
