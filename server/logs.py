"""Structured logs: one JSON object per line on stderr, `extra={...}` fields included as keys.

`logger.info("model version loaded", extra={"model": "cube", "version": 2})` prints
`{"ts": "...", "level": "info", "logger": "mfql.model", "msg": "model version loaded", "model": "cube", "version": 2}`.
uvicorn's own loggers go through the same formatter. The lines uvicorn and websockets write
for every WebSocket connection ("connection open", `"WebSocket /path" [accepted]`,
"connection closed") are demoted to debug: a fleet of robots reconnecting would otherwise
fill the log at the default level. `--log-level debug` shows them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(
            {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConnectionLinesAtDebug(logging.Filter):
    """uvicorn's and websockets' per-connection INFO lines become DEBUG lines."""

    MESSAGES = frozenset({"connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if record.levelno != logging.INFO or not (
            message in self.MESSAGES or message.startswith('%s - "WebSocket %s"')
        ):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def logging_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict for mfql's and uvicorn's loggers (uvicorn applies it)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
    loggers = {name: dict(logger) for name in ("mfql", "uvicorn", "uvicorn.error", "uvicorn.access")}
    loggers["uvicorn.error"]["filters"] = ["connection_lines"]  # where both libraries log connections
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"connection_lines": {"()": ConnectionLinesAtDebug}},
        "handlers": {"stderr": handler},
        "loggers": loggers,
    }
