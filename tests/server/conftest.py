"""Fixtures: tiny real bundles in temporary model repositories, in-process apps and real servers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.server.bundles import write_test_bundle


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return write_test_bundle(tmp_path / "repository" / "cube" / "1")


@pytest.fixture(scope="session")
def shared_repository(tmp_path_factory) -> Path:
    """cube (versions 1 and 2, different weights, with self-tests) and arm (other dims, no self-test)."""
    repository = tmp_path_factory.mktemp("server") / "repository"
    write_test_bundle(repository / "cube" / "1", weights_seed=1)
    write_test_bundle(repository / "cube" / "2", weights_seed=2)
    write_test_bundle(repository / "arm" / "3", "arm", 7, 2, selftest=False)
    return repository


CHUNK_HORIZON = 5  # actions per observation of the chunked test model (Q-chunking's h = 5)


@pytest.fixture(scope="session")
def chunked_repository(tmp_path_factory) -> Path:
    """chunks (versions 1 and 2: H = 5 actions of d = 5 per observation, 20 Hz) and cube (H = 1)."""
    repository = tmp_path_factory.mktemp("chunked") / "repository"
    for version in (1, 2):
        write_test_bundle(
            repository / "chunks" / str(version),
            "chunks",
            weights_seed=version,
            action_horizon=CHUNK_HORIZON,
            control_period_s=0.05,
        )
    write_test_bundle(repository / "cube" / "1", weights_seed=1)
    return repository


@pytest.fixture(scope="module")
def http(live):
    """An HTTP client of the module's `live` server."""
    with httpx.Client(base_url=live.url, timeout=10.0) as client:
        yield client
