"""Typed dependencies, so handlers read `repository: RepositoryDep` instead of digging in app.state.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool,
a thread hop per dependency per request for what is an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from server.metrics import ServerMetrics
from server.repository import ModelRepository
from server.settings import ServerSettings


async def get_repository(connection: HTTPConnection) -> ModelRepository:
    return connection.app.state.repository


async def get_metrics(connection: HTTPConnection) -> ServerMetrics:
    return connection.app.state.metrics


async def get_settings(connection: HTTPConnection) -> ServerSettings:
    return connection.app.state.settings


RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
MetricsDep = Annotated[ServerMetrics, Depends(get_metrics)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
