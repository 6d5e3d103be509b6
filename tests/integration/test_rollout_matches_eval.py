"""The whole product path: train -> export -> serve -> mfql-rollout, against mfql-eval on the checkpoint.

Served actions use the server's per-request noise and mfql-eval uses torch's, so the two runs
are different samples of the same policy: their success rates must agree within sampling error.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.live_server import running_server

ROOT = Path(__file__).resolve().parents[2]
TASK = "cube-single-play-singletask-task2-v0"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cli(name: str, module: str, *args: str) -> dict | None:
    executable = shutil.which(name, path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", module]
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout) if result.stdout.lstrip().startswith("{") else None


def agree(a: dict, b: dict) -> bool:
    """Success rates within 3 standard errors of their difference (pooled binomial estimate)."""
    p = (a["success_rate"] * a["episodes"] + b["success_rate"] * b["episodes"]) / (
        a["episodes"] + b["episodes"]
    )
    stderr = math.sqrt(max(p * (1 - p), 1e-12) * (1 / a["episodes"] + 1 / b["episodes"]))
    return abs(a["success_rate"] - b["success_rate"]) <= 3 * stderr + 1e-9


def test_tiny_trained_model_served_agrees_with_mfql_eval(tmp_path):
    data, run, repository = tmp_path / "data", tmp_path / "run", tmp_path / "repository"
    cli(
        "mfql-data", "training.data.cli", "generate", "--env", "cube-single-v0", "--episodes", "3",
        "--episode-length", "60", "--out", str(data / "cube-single-play-v0.npz"), "--no-progress",
    )  # fmt: skip
    cli(
        "mfql-train", "training.train", "--env", TASK, "--dataset-dir", str(data), "--out", str(run),
        "--policy", "mlp", "--mlp-hidden", "64,64", "--critic-hidden", "64,64", "--steps", "40",
        "--batch-size", "32", "--eval-episodes", "0", "--threads", "1",
    )  # fmt: skip
    cli("mfql-export", "exporters.cli", str(run), "--out", str(repository / "tiny" / "1"), "--format", "onnx")
    evaluated = cli("mfql-eval", "training.evaluate", str(run), "--episodes", "4", "--seed", "5")
    with running_server(repository) as url:
        served = cli(
            "mfql-rollout", "clients.rollout", "--url", url, "--model", "tiny", "--env", TASK,
            "--episodes", "4", "--seed", "5",
        )  # fmt: skip
    assert served["episodes"] == evaluated["episodes"] == 4
    assert served["num_candidates"] == evaluated["num_candidates"]  # both default to the trained K
    assert agree(served, evaluated), (served["success_rate"], evaluated["success_rate"])


@pytest.mark.slow
def test_embedded_default_model_served_reproduces_its_recorded_success_rate(tmp_path):
    """The default bundle's metadata holds the mfql-eval report of its checkpoint (50 episodes)."""
    default_model = ROOT / "server" / "default_model"
    (bundle,) = [p for p in default_model.glob("*/*") if p.is_dir()]
    metadata = json.loads((bundle / "metadata.json").read_text())
    recorded = metadata["evaluation"]
    repository = tmp_path / "repository"  # a copy: the server's log goes beside the repository
    shutil.copytree(default_model, repository)
    with running_server(repository) as url:
        served = cli(
            "mfql-rollout", "clients.rollout", "--url", url, "--model", metadata["name"],
            "--env", recorded["env"], "--episodes", str(recorded["episodes"]),
        )  # fmt: skip
    assert agree(served, recorded), (served["success_rate"], recorded["success_rate"])
