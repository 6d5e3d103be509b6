"""`create_app(settings)`: the FastAPI app, its repository and metrics, routers, error bodies, middleware.

Nothing is global: every app owns its repository, metrics registry and settings (app.state).
The model repository loads in the background once the app starts, so liveness answers at
once and readiness turns 200 when a version has been verified and warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.auth import ApiKeyMiddleware, read_api_keys
from server.control import ControlLoop
from server.errors import ServingError
from server.limits import BodySizeLimitMiddleware
from server.metrics import ServerMetrics
from server.repository import ModelRepository, require_repository
from server.routes import health, sessions, v1, v2, websocket
from server.schemas import validation_message
from server.sessions import SessionStore, sweep_forever
from server.settings import ServerSettings

logger = logging.getLogger("mfql.app")


def create_app(settings: ServerSettings) -> FastAPI:
    """Raises RepositoryMissing when there is nothing to serve (no repository, no embedded model)."""
    require_repository(settings)
    metrics = ServerMetrics()
    repository = ModelRepository(
        settings, observer_for=metrics.observer, on_change=lambda r: metrics.set_model_counts(*r.counts())
    )
    app = FastAPI(
        title="mfql policy server",
        summary="Batched serving of MeanFlow Q-learning policy bundles: REST, Open Inference Protocol v2, WebSocket",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.repository = repository
    app.state.metrics = metrics
    app.state.sessions = SessionStore(
        settings.max_sessions, settings.session_idle_s, metrics.session_events()
    )
    app.state.control = ControlLoop(metrics, settings.record_dir)
    for hot_routes in (v1.hot_routes, v2.hot_routes):  # act and infer first (routes/raw.py)
        hot_routes.install(app)
    for router in (v1.router, sessions.router, v2.router, health.router, websocket.router):
        app.include_router(router)
    _add_error_bodies(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.api_key_file is not None:
        app.add_middleware(ApiKeyMiddleware, keys=read_api_keys(settings.api_key_file))
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServerSettings = app.state.settings
    repository: ModelRepository = app.state.repository
    background = [
        asyncio.create_task(_load_then_poll(repository, settings.repository_poll_s)),
        asyncio.create_task(sweep_forever(app.state.sessions)),
    ]
    yield
    for task in background:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    app.state.sessions.close_all()  # closes the recordings' files
    await repository.close()


async def _load_then_poll(repository: ModelRepository, interval_s: float) -> None:
    changes = await repository.reload()
    loaded, failed = repository.counts()
    logger.info("model repository loaded", extra={"path": str(repository.root), **changes})
    if not loaded:
        logger.error(
            "no model version could be loaded", extra={"failed": failed, "path": str(repository.root)}
        )
    if interval_s > 0:
        await repository.poll_forever(interval_s)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers)


def _add_error_bodies(app: FastAPI) -> None:
    """Every error is `{"error": message}`, the body Triton's clients and mfql's clients read."""

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, validation_message(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))
