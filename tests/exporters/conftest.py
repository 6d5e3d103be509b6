"""Fixtures: checkpoints (tests/exporters/checkpoints.py) and bundles exported from them once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from exporters.export import ExportOptions, ExportResult, export_bundle
from tests.exporters.checkpoints import (
    REFERENCE_DIT,
    SMALL_DIT,
    SMALL_MLP,
    CheckpointSpec,
    write_checkpoint,
)
from training.inference import ServingPolicy, load_serving_policy


def pytest_configure(config: pytest.Config) -> None:
    # Raised inside torch.jit when the tests load policy.ts; TorchScript is what the format offers.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@dataclass(frozen=True)
class ExportedModel:
    """A checkpoint, its eager ServingPolicy and a bundle exported from it."""

    checkpoint: Path
    eager: ServingPolicy
    bundle: Path
    result: ExportResult


def _exported(checkpoint: Path, out: Path, **options) -> ExportedModel:
    result = export_bundle(checkpoint, ExportOptions(out=out, **options))
    eager, _ = load_serving_policy(checkpoint)
    return ExportedModel(checkpoint, eager, result.bundle_dir, result)


@pytest.fixture(scope="session")
def mlp_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("mlp") / "run", CheckpointSpec(SMALL_MLP, 17, 6, {}))


@pytest.fixture(scope="session")
def dit_checkpoint(tmp_path_factory) -> Path:
    """The reference-size DiT (width 256, 3 blocks) with reference critics (4 x 512, 2 members)."""
    metrics = {"success_rate": 0.8, "eval_step": 10, "eval_episodes": 50}
    return write_checkpoint(
        tmp_path_factory.mktemp("dit") / "run", CheckpointSpec(REFERENCE_DIT, 28, 5, metrics, seed=1)
    )


@pytest.fixture(scope="session")
def small_dit_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(
        tmp_path_factory.mktemp("small_dit") / "run", CheckpointSpec(SMALL_DIT, 11, 3, {}, seed=2)
    )


@pytest.fixture(scope="session")
def mlp_export(mlp_checkpoint, tmp_path_factory) -> ExportedModel:
    return _exported(mlp_checkpoint, tmp_path_factory.mktemp("mlp_export") / "bundle")


@pytest.fixture(scope="session")
def dit_export(dit_checkpoint, tmp_path_factory) -> ExportedModel:
    """Opset 18 (default), ONNX + TorchScript, with a Triton repository."""
    root = tmp_path_factory.mktemp("dit_export")
    return _exported(dit_checkpoint, root / "bundle", triton_repo=root / "triton")


CHUNK = 5  # the action horizon of the chunked fixtures (Q-chunking's h = 5)


@pytest.fixture(scope="session")
def chunked_mlp_checkpoint(tmp_path_factory) -> Path:
    """A chunked MFQL policy: H = 5 actions of d = 4 per observation (networks see 20-vectors)."""
    spec = CheckpointSpec(SMALL_MLP, 17, 4, {}, seed=3, action_horizon=CHUNK)
    return write_checkpoint(tmp_path_factory.mktemp("chunked_mlp") / "run", spec)


@pytest.fixture(scope="session")
def chunked_dit_checkpoint(tmp_path_factory) -> Path:
    spec = CheckpointSpec(SMALL_DIT, 11, 3, {}, seed=4, action_horizon=CHUNK)
    return write_checkpoint(tmp_path_factory.mktemp("chunked_dit") / "run", spec)


@pytest.fixture(scope="session")
def chunked_mlp_export(chunked_mlp_checkpoint, tmp_path_factory) -> ExportedModel:
    """Opset 18, ONNX + TorchScript, with a Triton repository."""
    root = tmp_path_factory.mktemp("chunked_mlp_export")
    return _exported(chunked_mlp_checkpoint, root / "bundle", triton_repo=root / "triton")


@pytest.fixture(scope="session")
def chunked_dit_export(chunked_dit_checkpoint, tmp_path_factory) -> ExportedModel:
    return _exported(chunked_dit_checkpoint, tmp_path_factory.mktemp("chunked_dit_export") / "bundle")
