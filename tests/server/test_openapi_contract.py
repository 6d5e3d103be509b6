"""The OpenAPI document is what the server does: schemathesis against a live server, every check.

`schemathesis run URL/openapi.json --checks all` sends schema-valid and schema-invalid
requests to every operation and fails on a 5xx, a status or content type the schema does not
document, a response body off its schema, valid data refused, invalid data accepted.
schemathesis.toml (repository root) says why a body the schema allows may still get 422.
The default suite runs the examples and coverage phases (boundary and missing-value cases,
where undocumented statuses show up); the slow suite runs every phase at full size, also
against the embedded default model (a bundle from before action chunks) beside a chunked one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from server.settings import EMBEDDED_REPOSITORY
from tests.server.bundles import write_test_bundle
from tests.server.conftest import CHUNK_HORIZON
from tests.server.live import ROOT, console_script, serving


def schemathesis(url: str, *options: str) -> subprocess.CompletedProcess:
    command = [*console_script("schemathesis", "schemathesis.cli"), "run", f"{url}/openapi.json"]
    command += ["--checks", "all", "--no-color", *options]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def assert_no_failures(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failure" not in result.stdout.split("SUMMARY")[-1]


def test_schemathesis_examples_and_coverage_phases_find_no_failure(shared_repository):
    with serving(shared_repository) as server:
        result = schemathesis(
            server.url, "--phases", "examples,coverage", "--max-examples", "10", "--seed", "1"
        )
    assert_no_failures(result)


@pytest.mark.slow
def test_schemathesis_every_phase_finds_no_failure(shared_repository):
    with serving(shared_repository) as server:
        assert_no_failures(schemathesis(server.url))


@pytest.fixture(scope="module")
def default_and_chunked_repository(tmp_path_factory) -> Path:
    """The embedded default model, as shipped, and a chunked model (H = 5), served side by side."""
    repository = tmp_path_factory.mktemp("contract") / "repository"
    shutil.copytree(EMBEDDED_REPOSITORY / "cube-single", repository / "cube-single")
    bundle = repository / "chunks" / "1"
    write_test_bundle(bundle, "chunks", action_horizon=CHUNK_HORIZON, control_period_s=0.05)
    return repository


def test_schemathesis_finds_no_failure_on_the_default_model_beside_a_chunked_one(
    default_and_chunked_repository,
):
    with serving(default_and_chunked_repository) as server:
        result = schemathesis(
            server.url, "--phases", "examples,coverage", "--max-examples", "10", "--seed", "1"
        )
    assert_no_failures(result)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_schemathesis_every_phase_finds_no_failure_on_the_default_model_beside_a_chunked_one(
    default_and_chunked_repository, seed
):
    with serving(default_and_chunked_repository) as server:
        assert_no_failures(schemathesis(server.url, "--seed", str(seed)))
