"""A run trained with `--precision bf16` exports to the same float32 bundle an fp32 run does:
bf16 lives only in the training step's matmuls, never in the checkpoint or the served graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch

from exporters.bundle import ONNX_FILE, read_metadata
from exporters.runtimes import OnnxRuntimePolicy
from tests.training.test_cli_end_to_end import data_dir, run_cli, train_args  # noqa: F401  (fixture)
from training.inference import load_serving_policy


def test_bf16_run_exports_a_float32_bundle_that_matches_its_checkpoint(data_dir, tmp_path):  # noqa: F811
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    trained = run_cli("mfql-train", "training.train", *train_args(data_dir, run, "--precision", "bf16"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = json.loads(next((run / "checkpoints").glob("step_*/config.json")).read_text())["config"]
    assert config["precision"] == "bf16"

    exported = run_cli("mfql-export", "exporters.cli", str(run), "--out", str(bundle), "--format", "onnx")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "parity onnxruntime vs eager PyTorch" in exported.stdout
    graph = onnx.load(str(bundle / ONNX_FILE))
    assert {init.data_type for init in graph.graph.initializer} <= {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,
    }

    # The metadata names the run and the dataset, not this machine's folders.
    metadata = read_metadata(bundle)
    assert metadata["source_checkpoint"].startswith("run/checkpoints/step_")
    assert (metadata["training_config"]["out_dir"], metadata["training_config"]["dataset_dir"]) == (
        "run",
        data_dir.name,
    )
    assert str(tmp_path) not in json.dumps(metadata)

    # The served graph answers as the checkpoint's own float32 eager model does.
    policy, checkpoint = load_serving_policy(run)
    assert read_metadata(bundle)["obs_dim"] == checkpoint.obs_dim
    rng = np.random.default_rng(0)
    observation = rng.standard_normal((7, checkpoint.obs_dim)).astype(np.float32)
    noise = rng.standard_normal((7, 3, checkpoint.action_dim)).astype(np.float32)
    served = OnnxRuntimePolicy(bundle / ONNX_FILE)(observation, noise)
    with torch.no_grad():
        _, q_value, candidates = policy(torch.from_numpy(observation), torch.from_numpy(noise))
    # Candidates and their best Q agree; which of two near-tied candidates wins may differ by
    # float rounding after a 30-step run, so the action is checked to be one of the candidates.
    np.testing.assert_allclose(served["candidates"], candidates.numpy(), atol=1e-5)
    np.testing.assert_allclose(served["q_value"], q_value.numpy(), atol=1e-4)
    chosen = np.abs(served["candidates"] - served["action"][:, None, :]).max(axis=-1).min(axis=-1)
    assert chosen.max() < 1e-6
