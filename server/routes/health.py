"""Liveness, readiness and metrics: open without an API key (load balancers and Prometheus probe them)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import metrics_of, repository_of
from server.errors import Unavailable
from server.repository import ModelRepository
from server.schemas import error_responses

router = APIRouter(tags=["health and metrics"])


@router.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready", responses=error_responses(503))
async def ready(request: Request) -> dict:
    """200 once a model version serves; 503 while loading, with nothing loadable, or when shutting down."""
    return readiness(repository_of(request))


def readiness(repository: ModelRepository) -> dict:
    if not repository.accepting:
        raise Unavailable("shutting down", retry_after=5)
    if not repository.initial_load_done:
        raise Unavailable("loading the model repository", retry_after=1)
    if not repository.ready:
        raise Unavailable("no model version is ready (see GET /v1/models for failures)", retry_after=5)
    return {"ready": True}


@router.get("/healthz", responses=error_responses(503))
async def healthz(request: Request) -> dict:
    """openpi's health path: the same answer as readiness."""
    return readiness(repository_of(request))


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    content, content_type = metrics_of(request).render()
    return Response(content, media_type=content_type)
