"""Liveness, readiness and metrics: open without an API key (load balancers and Prometheus probe them)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.deps import MetricsDep, RepositoryDep
from server.errors import Unavailable

router = APIRouter(tags=["health and metrics"])


@router.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(repository: RepositoryDep) -> dict:
    """200 once a model version serves; 503 while loading, with nothing loadable, or when shutting down."""
    if not repository.accepting:
        raise Unavailable("shutting down", retry_after=5)
    if not repository.initial_load_done:
        raise Unavailable("loading the model repository", retry_after=1)
    if not repository.ready:
        raise Unavailable("no model version is ready (see GET /v1/models for failures)", retry_after=5)
    return {"ready": True}


@router.get("/healthz")
async def healthz(repository: RepositoryDep) -> dict:
    """openpi's health path: the same answer as readiness."""
    return await ready(repository)


@router.get("/metrics")
async def metrics(metrics: MetricsDep) -> Response:
    content, content_type = metrics.render()
    return Response(content, media_type=content_type)
