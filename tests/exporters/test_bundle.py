"""The bundle on disk: metadata per docs/bundle-format.md, SHA256SUMS, atomic and non-destructive writes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import exporters.export
import exporters.metadata
from exporters.bundle import (
    CHECKSUMS_FILE,
    MODEL_NAME_PATTERN,
    REQUIRED_METADATA_KEYS,
    read_metadata,
    verify_checksums,
)
from exporters.cli import main
from exporters.errors import ExportError
from exporters.export import ExportOptions, export_bundle
from training.checkpoint import file_sha256, load_policy_checkpoint


def test_metadata_describes_the_model_per_the_bundle_format(dit_export, dit_checkpoint):
    metadata = read_metadata(dit_export.bundle)
    checkpoint = load_policy_checkpoint(dit_checkpoint)
    assert set(REQUIRED_METADATA_KEYS) <= metadata.keys()
    assert metadata["format_version"] == 1
    assert MODEL_NAME_PATTERN.match(metadata["name"])
    assert metadata["name"] == "cube-single-play-singletask-task2-v0-dit"
    assert (metadata["obs_dim"], metadata["action_dim"]) == (28, 5)
    assert metadata["action_low"] == [-1.0] * 5 and metadata["action_high"] == [1.0] * 5
    assert metadata["default_num_candidates"] == checkpoint.config.agent_config.num_candidates == 5
    assert metadata["max_num_candidates"] == 32
    assert metadata["policy_type"] == "dit"
    assert metadata["env_name"] == "cube-single-play-singletask-task2-v0"
    assert metadata["training_step"] == 10
    assert metadata["success_rate"] == 0.8
    assert metadata["source_checkpoint_sha256"] == checkpoint.sha256()
    assert metadata["exported_at"].endswith("Z")
    assert {"mfql", "torch", "onnx", "opset"} <= metadata["versions"].keys()
    assert metadata["files"] == {"onnx": "policy.onnx", "torchscript": "policy.ts"}
    assert metadata["precision"] == "float32"
    assert metadata["action_horizon"] == 1  # one action per observation: today's signature


def test_chunked_metadata_carries_the_horizon_the_chunk_shapes_and_the_envs_control_period(
    chunked_mlp_export,
):
    metadata = read_metadata(chunked_mlp_export.bundle)
    assert (metadata["action_dim"], metadata["action_horizon"]) == (4, 5)
    assert metadata["action_low"] == [-1.0] * 4  # bounds are per action, for every step of a chunk
    assert metadata["training_config"]["agent_config"]["action_horizon"] == 5
    shapes = {t["name"]: t["shape"] for t in [*metadata["inputs"], *metadata["outputs"]]}
    assert shapes == {
        "observation": ["B", 17],
        "noise": ["B", "K", 5, 4],
        "action": ["B", 5, 4],
        "q_value": ["B"],
        "candidates": ["B", "K", 5, 4],
    }
    pytest.importorskip("ogbench")
    assert metadata["control_period_s"] == pytest.approx(0.05)  # OGBench manipulation: 20 Hz


def test_control_period_option_is_recorded_and_an_unknown_env_leaves_it_null(
    tmp_path, mlp_checkpoint, monkeypatch, capsys
):
    code = main([str(mlp_checkpoint), "--out", str(tmp_path / "b"), "--format", "onnx", "--opset", "17",
                 "--control-period-s", "0.02"])  # fmt: skip
    assert code == 0 and read_metadata(tmp_path / "b")["control_period_s"] == 0.02
    assert "(action_horizon 1), control period 0.02 s" in capsys.readouterr().out
    assert exporters.metadata.env_control_period("no-such-env-singletask-v0") is None
    monkeypatch.setattr(exporters.export, "env_control_period", lambda name, keys=None: None)
    options = ExportOptions(out=tmp_path / "unknown", formats=("onnx",), opset=17)
    assert export_bundle(mlp_checkpoint, options).metadata["control_period_s"] is None


def test_unknown_success_rate_is_null(mlp_export):
    metadata = read_metadata(mlp_export.bundle)
    assert metadata["success_rate"] is None
    assert metadata["policy_type"] == "mlp"


def test_sha256sums_covers_every_other_file_and_passes_sha256sum_check(dit_export):
    listed = [
        line.split("  ", 1)[1] for line in (dit_export.bundle / CHECKSUMS_FILE).read_text().splitlines()
    ]
    others = sorted(p.name for p in dit_export.bundle.iterdir() if p.name != CHECKSUMS_FILE)
    assert sorted(listed) == others
    assert {"policy.onnx", "policy.ts", "metadata.json", "selftest.npz"} <= set(listed)
    check = subprocess.run(
        ["sha256sum", "-c", CHECKSUMS_FILE], cwd=dit_export.bundle, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert verify_checksums(dit_export.bundle) == others


def test_onnx_only_bundle_lists_no_torchscript(tmp_path, mlp_checkpoint):
    result = export_bundle(mlp_checkpoint, ExportOptions(out=tmp_path / "b", formats=("onnx",)))
    assert not (result.bundle_dir / "policy.ts").exists()
    assert result.metadata["files"] == {"onnx": "policy.onnx"}
    assert set(verify_checksums(result.bundle_dir)) == {"metadata.json", "policy.onnx", "selftest.npz"}


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in directory.iterdir() if p.is_file()}


def test_existing_bundle_is_refused_without_overwrite_and_left_intact(mlp_export, mlp_checkpoint, capsys):
    before = _snapshot(mlp_export.bundle)
    code = main([str(mlp_checkpoint), "--out", str(mlp_export.bundle), "--format", "onnx"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "already exists" in error and "--overwrite" in error and "\n" not in error
    assert _snapshot(mlp_export.bundle) == before


def test_overwrite_replaces_an_existing_bundle(tmp_path, mlp_checkpoint):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stale.txt").write_text("old bundle")
    export_bundle(mlp_checkpoint, ExportOptions(out=out, formats=("onnx",), overwrite=True))
    assert not (out / "stale.txt").exists()
    verify_checksums(out)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging or retired directory left


def test_a_failure_mid_export_leaves_no_partial_bundle_and_keeps_the_old_one(
    tmp_path, mlp_checkpoint, monkeypatch
):
    out = tmp_path / "bundle"
    shutil.copytree(
        export_bundle(mlp_checkpoint, ExportOptions(out=tmp_path / "first", formats=("onnx",))).bundle_dir,
        out,
    )
    shutil.rmtree(tmp_path / "first")
    before = _snapshot(out)

    def fail_torchscript(*args, **kwargs):
        raise OSError("disk full while writing policy.ts")

    monkeypatch.setattr(exporters.export, "export_torchscript", fail_torchscript)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(mlp_checkpoint, ExportOptions(out=out, overwrite=True))
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def _corrupt_weights(step_dir: Path) -> None:
    (step_dir / "model.safetensors").write_bytes(b"not a safetensors file")


def _incompatible_dims(step_dir: Path) -> None:
    description = json.loads((step_dir / "config.json").read_text())
    description["action_dim"] += 1  # weights were trained for the old action_dim
    (step_dir / "config.json").write_text(json.dumps(description))


def _unknown_policy(step_dir: Path) -> None:
    description = json.loads((step_dir / "config.json").read_text())
    description["config"]["network"]["policy"] = "transformer-xl"
    (step_dir / "config.json").write_text(json.dumps(description))


def _missing_config(step_dir: Path) -> None:
    (step_dir / "config.json").unlink()


@pytest.mark.parametrize("damage", [_corrupt_weights, _incompatible_dims, _unknown_policy, _missing_config])
def test_corrupt_or_incompatible_checkpoint_fails_with_one_line_and_writes_nothing(
    tmp_path, mlp_checkpoint, damage, capsys
):
    run = tmp_path / "run"
    shutil.copytree(mlp_checkpoint, run)
    step_dir = next((run / "checkpoints").iterdir())
    damage(step_dir)
    target = step_dir if damage is _missing_config else run
    code = main([str(target), "--out", str(tmp_path / "bundle")])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("mfql-export: ") and error.count("\n") == 1, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"formats": ("torchscript",)}, "including onnx"),
        ({"formats": ("onnx", "tflite")}, "subset of onnx,torchscript"),
        ({"name": "../escape"}, "--name must match"),
        ({"max_candidates": 2}, "below the trained K = 5"),
        ({"num_candidates": 40}, "--max-candidates 32 is below --num-candidates 40"),
        ({"num_candidates": 0}, "--num-candidates must be >= 1"),
        ({"opset": 16}, "--opset must be between 17"),
        ({"control_period_s": -0.05}, "--control-period-s must be a positive number"),
    ],
)
def test_invalid_options_are_refused_before_anything_is_written(tmp_path, mlp_checkpoint, options, message):
    with pytest.raises(ExportError, match=message):
        export_bundle(mlp_checkpoint, ExportOptions(out=tmp_path / "bundle", **options))
    assert list(tmp_path.iterdir()) == []
