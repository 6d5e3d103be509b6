"""The OpenAPI document is what the server does: schemathesis against a live server, every check.

`schemathesis run URL/openapi.json --checks all` sends schema-valid and schema-invalid
requests to every operation and fails on a 5xx, a status or content type the schema does not
document, a response body off its schema, valid data refused, invalid data accepted.
schemathesis.toml (repository root) says why a body the schema allows may still get 422.
The default suite runs the examples and coverage phases (boundary and missing-value cases,
where undocumented statuses show up); the slow suite runs every phase at full size.
"""

from __future__ import annotations

import subprocess

import pytest

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
