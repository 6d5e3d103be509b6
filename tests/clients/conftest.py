"""Fixtures: tiny real bundles and real ``mfql-serve`` processes (open, with an API key, chunked)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.live_server import (
    API_KEY,
    CHUNK_HORIZON,
    CHUNKED,
    CUBE,
    CUBE_ACTION_DIM,
    CUBE_ENV,
    CUBE_OBS_DIM,
    running_server,
)
from tests.clients.tiny_bundle import write_bundle


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("clients") / "model_repository"
    write_bundle(repository / CUBE / "1", CUBE, CUBE_OBS_DIM, CUBE_ACTION_DIM, CUBE_ENV)
    return repository


@pytest.fixture(scope="session")
def server_url(model_repository) -> Iterator[str]:
    with running_server(model_repository) as url:
        yield url


@pytest.fixture(scope="session")
def secured_server_url(model_repository) -> Iterator[str]:
    key_file = model_repository.parent / "api-key"
    key_file.write_text(API_KEY + "\n")
    with running_server(model_repository, "--api-key-file", str(key_file)) as url:
        yield url


@pytest.fixture(scope="session")
def chunked_server_url(tmp_path_factory) -> Iterator[str]:
    """A server whose one model answers chunks of CHUNK_HORIZON actions (its own, so the H = 1
    server's default model stays the only one there)."""
    repository = tmp_path_factory.mktemp("chunked") / "model_repository"
    write_bundle(
        repository / CHUNKED / "1",
        CHUNKED,
        CUBE_OBS_DIM,
        CUBE_ACTION_DIM,
        CUBE_ENV,
        action_horizon=CHUNK_HORIZON,
        control_period_s=0.05,
    )
    with running_server(repository) as url:
        yield url
