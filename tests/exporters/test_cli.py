"""`mfql-export` as a user runs it: the console script in a subprocess, then `inspect` on its bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from exporters.bundle import ONNX_FILE, OUTPUT_NAMES, read_metadata
from exporters.cli import main
from exporters.errors import ExportError
from exporters.export import ExportOptions, export_bundle
from exporters.runtimes import OnnxRuntimePolicy
from tests.exporters.checkpoints import SMALL_MLP, CheckpointSpec, write_checkpoint, write_fql_checkpoint
from training.checkpoint import load_policy_checkpoint
from training.inference import load_serving_policy


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("mfql-export")
    return [str(script)] if script.exists() else [shutil.which("mfql-export") or "mfql-export"]


def test_console_script_exports_a_dit_at_opset_17_with_triton_and_inspects_it(small_dit_checkpoint, tmp_path):
    bundle, triton = tmp_path / "bundle", tmp_path / "triton"
    command = [
        *_console_script(),
        str(small_dit_checkpoint),
        "--out", str(bundle),
        "--opset", "17",
        "--max-candidates", "8",
        "--name", "small-dit",
        "--triton-repo", str(triton),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"wrote {bundle} (small-dit, dit, float32)" in run.stdout
    assert "nodes," in run.stdout and "MB, opset 17 (torch.onnx torchscript)" in run.stdout
    assert "parity onnxruntime vs eager PyTorch" in run.stdout and "(K = 1, 5, 8)" in run.stdout
    assert (triton / "small-dit" / "config.pbtxt").is_file()
    metadata = read_metadata(bundle)
    assert (metadata["max_num_candidates"], metadata["versions"]["opset"]) == (8, 17)

    inspect = subprocess.run(
        [*_console_script(), "inspect", str(bundle)], capture_output=True, text=True, timeout=300
    )
    assert inspect.returncode == 0, inspect.stderr
    assert "onnx vs torchscript: OK" in inspect.stdout


def test_console_script_reports_a_missing_checkpoint_in_one_line(tmp_path):
    run = subprocess.run(
        [*_console_script(), str(tmp_path / "nope"), "--out", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr == f"mfql-export: {tmp_path / 'nope'}: no such checkpoint or run directory\n"
    assert not (tmp_path / "bundle").exists()


def test_fql_checkpoint_exports_its_one_step_policy(tmp_path):
    run = write_fql_checkpoint(tmp_path / "run", CheckpointSpec(SMALL_MLP, 9, 2, {}))
    result = export_bundle(run, ExportOptions(out=tmp_path / "bundle", formats=("onnx",)))
    assert (result.metadata["agent"], result.metadata["policy_type"]) == ("fql", "mlp")
    assert result.metadata["default_num_candidates"] == 1
    eager, _ = load_serving_policy(run)
    rng = np.random.default_rng(0)
    observation = rng.standard_normal((7, 9)).astype(np.float32)
    noise = rng.standard_normal((7, 3, 2)).astype(np.float32)
    got = OnnxRuntimePolicy(result.bundle_dir / ONNX_FILE)(observation, noise)
    with torch.inference_mode():
        expected = eager(torch.from_numpy(observation), torch.from_numpy(noise))
    for name, reference in zip(OUTPUT_NAMES, expected, strict=True):
        np.testing.assert_allclose(got[name], reference.numpy(), rtol=0, atol=1e-5, err_msg=name)


def test_evaluation_report_sets_the_success_rate_and_a_mismatched_one_is_refused(tmp_path):
    run = write_fql_checkpoint(tmp_path / "run", CheckpointSpec(SMALL_MLP, 9, 2, {}))
    checkpoint = load_policy_checkpoint(run)
    report = {"env": checkpoint.config.env_name, "step": checkpoint.step, "episodes": 50}
    report.update({"num_candidates": 1, "success_rate": 0.62, "success_rate_stderr": 0.07})
    (tmp_path / "eval.json").write_text(json.dumps(report))
    options = ExportOptions(out=tmp_path / "bundle", formats=("onnx",), evaluation=tmp_path / "eval.json")
    metadata = export_bundle(run, options).metadata
    assert metadata["success_rate"] == 0.62 and metadata["evaluation"]["episodes"] == 50

    (tmp_path / "stale.json").write_text(json.dumps({**report, "step": checkpoint.step + 1}))
    stale = ExportOptions(out=tmp_path / "other", formats=("onnx",), evaluation=tmp_path / "stale.json")
    with pytest.raises(ExportError, match=f"evaluated step {checkpoint.step + 1}"):
        export_bundle(run, stale)
    assert not (tmp_path / "other").exists()


def test_num_candidates_sets_the_bundles_default_k_and_the_report_must_have_acted_with_it(tmp_path, capsys):
    """A MeanFlow run acting with K = 5, served with K = 8 by default (`--num-candidates 8`): a
    report of K = 8 is refused for the run's own K and accepted for the bundle of K = 8, whose
    metadata and self-test cases carry it."""
    run = write_checkpoint(tmp_path / "run", CheckpointSpec(SMALL_MLP, 9, 2, {}))
    checkpoint = load_policy_checkpoint(run)
    assert checkpoint.config.acting_num_candidates == 5
    report = {"env": checkpoint.config.env_name, "step": checkpoint.step, "episodes": 50}
    report.update({"num_candidates": 8, "success_rate": 0.7, "success_rate_stderr": 0.06})
    (tmp_path / "eval-k8.json").write_text(json.dumps(report))
    argv = [
        str(run),
        "--format",
        "onnx",
        "--evaluation",
        str(tmp_path / "eval-k8.json"),
        "--max-candidates",
        "16",
    ]
    assert main([*argv, "--out", str(tmp_path / "k5")]) == 2
    assert "acted with K = 8 candidates; the bundle's default K is 5" in capsys.readouterr().err
    assert not (tmp_path / "k5").exists()
    assert main([*argv, "--out", str(tmp_path / "k8"), "--num-candidates", "8"]) == 0
    metadata = read_metadata(tmp_path / "k8")
    assert (metadata["default_num_candidates"], metadata["max_num_candidates"]) == (8, 16)
    assert metadata["success_rate"] == 0.7 and metadata["evaluation"]["num_candidates"] == 8
    assert (
        "parity onnxruntime vs eager PyTorch" in (out := capsys.readouterr().out) and "(K = 1, 8, 16)" in out
    )


def test_chunked_fql_checkpoint_exports_its_one_step_chunk_policy(tmp_path):
    run = write_fql_checkpoint(tmp_path / "run", CheckpointSpec(SMALL_MLP, 9, 2, {}, action_horizon=3))
    options = ExportOptions(out=tmp_path / "bundle", formats=("onnx",), opset=17)
    result = export_bundle(run, options)
    assert (result.metadata["agent"], result.metadata["action_horizon"]) == ("fql", 3)
    eager, _ = load_serving_policy(run)
    rng = np.random.default_rng(0)
    observation = rng.standard_normal((7, 9)).astype(np.float32)
    noise = rng.standard_normal((7, 4, 3, 2)).astype(np.float32)
    got = OnnxRuntimePolicy(result.bundle_dir / ONNX_FILE)(observation, noise)
    with torch.inference_mode():
        expected = eager(torch.from_numpy(observation), torch.from_numpy(noise))
    for name, reference in zip(OUTPUT_NAMES, expected, strict=True):
        np.testing.assert_allclose(got[name], reference.numpy(), rtol=0, atol=1e-5, err_msg=name)
    assert got["action"].shape == (7, 3, 2)


def test_export_writes_action_limits_for_the_server_and_refuses_wider_ones(mlp_checkpoint, tmp_path):
    from server.bundle_loader import BundleMetadata

    options = dict(formats=("onnx",), action_low=(-0.5,), action_high=(0.5,), max_action_delta=(0.1,))
    result = export_bundle(mlp_checkpoint, ExportOptions(out=tmp_path / "limited", **options))
    dim = result.metadata["action_dim"]
    assert (
        result.metadata["action_low"] == [-0.5] * dim and result.metadata["max_action_delta"] == [0.1] * dim
    )
    BundleMetadata(**read_metadata(tmp_path / "limited"))  # what the server loads
    with pytest.raises(ExportError, match="must lie within the policy's range"):
        export_bundle(
            mlp_checkpoint, ExportOptions(out=tmp_path / "wide", formats=("onnx",), action_low=(-2.0,))
        )
    with pytest.raises(ExportError, match="--max-action-delta needs 1 or action_dim"):
        export_bundle(
            mlp_checkpoint,
            ExportOptions(out=tmp_path / "bad", formats=("onnx",), max_action_delta=(0.1, 0.2)),
        )
