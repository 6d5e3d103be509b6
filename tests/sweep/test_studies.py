"""The study analyses beside the sweep (training/studies/) read MFQL, FQL and chunked checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sweep.conftest import TASK, TINY
from training.sweep.arms import ARMS, BASE
from training.train import main as train

ROOT = Path(__file__).resolve().parents[2]
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def runs(sweep_data_dir, tmp_path_factory) -> Path:
    """10-step runs of four study arms, as a sweep leaves them (one action per step, an EMA
    policy, FQL, chunks of 5)."""
    out = tmp_path_factory.mktemp("runs")
    for arm in ("paper", "ema", "fql", "chunk-5"):
        flags = ["--env", TASK, "--dataset-dir", str(sweep_data_dir), "--out", str(out / f"{arm}-seed0")]
        flags += ["--steps", "10", "--eval-episodes", "0", "--threads", "1", *BASE, *ARMS[arm][1], *TINY]
        assert train(flags) == 0
    return out


def study(module: str, run: Path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", f"training.studies.{module}", str(run), *args],
        capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("arm, agent", [("paper", "mfql"), ("fql", "fql"), ("chunk-5", "mfql")])
def test_gradient_balance_splits_the_policy_gradient_at_a_checkpoint(runs, arm, agent):
    report = study("gradient_balance", runs / f"{arm}-seed0", "--batches", "2")
    assert report["agent"] == agent and report["step"] == 10
    assert report["bc_grad_norm_per_batch"] > 0 and report["q_grad_norm_per_batch"] > 0
    assert -1.0 <= report["cosine_bc_q"] <= 1.0
    if agent == "mfql":
        draws = report["bc_grad_norm_by_mfi_draws"]
        assert list(draws) == ["M=1", "M=4", "M=16"] and all(v > 0 for v in draws.values())
        assert report["bc_grad_norm_by_t_bin"] and -1.0 <= report["cosine_adam_step_q"] <= 1.0


@pytest.mark.parametrize("arm, agent", [("ema", "mfql"), ("fql", "fql"), ("chunk-5", "mfql")])
def test_generator_quality_scores_the_acting_generator(runs, arm, agent):
    report = study("generator_quality", runs / f"{arm}-seed0", "--states", "64", "--k", "4")
    assert report["agent"] == agent and (report["states"], report["k"]) == (64, 4)
    # cube actions in [-1, 1]^5 (a chunk's squared distance is per action)
    assert 0 <= report["nearest_sq_dist"] <= report["mean_sq_dist"] <= 4 * 5
    assert report["action_horizon"] == (5 if arm.startswith("chunk") else 1)
    assert report["spread"] >= 0 and report["q_best_of_5"] >= report["q_candidates"] - 1e-4
    assert ("bc_flow_nearest_sq_dist" in report) == (agent == "fql")
