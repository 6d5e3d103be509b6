"""`mfql-serve`: serve the bundles of a model repository (flags generated from `ServerSettings`).

    mfql-serve --model-repository models/ --port 8000 --api-key-file keys.txt
    MFQL_MAX_BATCH_SIZE=64 mfql-serve          # every flag is also an MFQL_* environment variable

SIGTERM (or Ctrl-C) drains: readiness turns 503 and new requests are refused with 503 at
once, queued and running requests finish (at most `--drain-timeout-s`), then the process
exits 0. A second signal refuses what is still queued (503) and stops; a third stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import signal
import sys
import typing
from types import FrameType

import uvicorn
from pydantic import ValidationError

from server.app import create_app
from server.logs import logging_config
from server.repository import ModelRepository, RepositoryMissing
from server.settings import ServerSettings

logger = logging.getLogger("mfql.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfql-serve", description=__doc__.splitlines()[0])
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"MFQL_{name.upper()}"
        help_text = f"{field.description} [default: {field.default}; env {env}]"
        options: dict[str, typing.Any] = {"default": argparse.SUPPRESS, "help": help_text}
        choices = (
            typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
        )
        if field.annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif choices:
            options["choices"] = choices
        parser.add_argument(flag, **options)
    return parser


def load_settings(argv: list[str] | None) -> ServerSettings:
    """Flags over MFQL_* environment variables over defaults; SystemExit(2) naming the bad value."""
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    try:
        return ServerSettings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        parser.error(problems)  # exits with status 2


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains the model queues before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, repository: ModelRepository, drain_timeout_s: float):
        super().__init__(config)
        self.repository = repository
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task | None = None
        self._signals = 0

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._loop is None or self._signals > 2:
            self.should_exit = self.force_exit = True
        elif self._signals == 2:  # asked again: fail what is queued (503) instead of waiting for it
            self._loop.call_soon_threadsafe(self._abort)
        else:
            self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _abort(self) -> None:
        logger.warning("stopping now: queued requests are refused")
        self.repository.abort()
        self.should_exit = True

    def _start_drain(self, signal_name: str) -> None:
        logger.info(
            "draining before shutdown", extra={"signal": signal_name, "timeout_s": self.drain_timeout_s}
        )
        self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        drained = await self.repository.drain(self.drain_timeout_s)
        if not drained:
            logger.warning("drain timed out; stopping with requests still queued")
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    log_config = logging_config(settings.log_level)
    logging.config.dictConfig(log_config)
    try:
        app = create_app(settings)
    except (RepositoryMissing, ValueError, OSError) as exc:  # e.g. an api_key_file with no key
        print(f"mfql-serve: {exc}", file=sys.stderr)
        return 2
    logger.info(
        "starting",
        extra={
            "host": settings.host,
            "port": settings.port,
            "repository": str(settings.repository_path),
            "max_batch_size": settings.max_batch_size,
            "max_queue_delay_us": settings.max_queue_delay_us,
            "backend": settings.backend,
            "auth": settings.api_key_file is not None,
        },
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        log_level=settings.log_level,
        access_log=settings.access_log,
        ws_max_size=settings.max_request_bytes,
        timeout_graceful_shutdown=max(settings.drain_timeout_s, 1.0),
        lifespan="on",
    )
    DrainingServer(config, app.state.repository, settings.drain_timeout_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
