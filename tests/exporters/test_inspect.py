"""`mfql-export inspect`: metadata, checksum verification and the parity self-test, with or without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporters.bundle import CHECKSUMS_FILE, METADATA_FILE, SELFTEST_FILE, write_checksums
from exporters.cli import main
from exporters.parity import load_parity_cases, save_parity_cases


@pytest.fixture
def bundle_copy(tmp_path, mlp_export) -> Path:
    return Path(shutil.copytree(mlp_export.bundle, tmp_path / "bundle"))


def test_inspect_prints_metadata_verifies_checksums_and_runs_both_self_tests(dit_export, capsys):
    assert main(["inspect", str(dit_export.bundle)]) == 0
    out = capsys.readouterr().out
    metadata_text = out[: out.index("\nchecksums:")]
    assert json.loads(metadata_text)["name"] == "cube-single-play-singletask-task2-v0-dit"
    assert "checksums: OK (metadata.json, policy.onnx, policy.ts, selftest.npz)" in out
    assert "onnx vs recorded eager PyTorch outputs: OK (K = 1, 5, 32" in out
    assert "onnx vs torchscript: OK" in out


def test_inspect_refuses_a_tampered_file(bundle_copy, capsys):
    with open(bundle_copy / "policy.onnx", "ab") as handle:
        handle.write(b"\0")
    assert main(["inspect", str(bundle_copy)]) == 2
    error = capsys.readouterr().err
    assert "policy.onnx: SHA-256" in error and error.count("\n") == 1


def test_inspect_refuses_an_unlisted_file(bundle_copy, capsys):
    (bundle_copy / "extra.onnx").write_bytes(b"")
    assert main(["inspect", str(bundle_copy)]) == 2
    assert "not listed in SHA256SUMS: extra.onnx" in capsys.readouterr().err


def test_inspect_refuses_a_missing_listed_file(bundle_copy, capsys):
    (bundle_copy / "policy.ts").unlink()
    assert main(["inspect", str(bundle_copy)]) == 2
    assert "policy.ts is listed in SHA256SUMS but missing" in capsys.readouterr().err


def test_self_test_fails_when_the_recorded_outputs_disagree_with_the_graph(bundle_copy, capsys):
    cases = load_parity_cases(bundle_copy / SELFTEST_FILE)
    cases[0].reference["q_value"] += 0.1  # as if the graph no longer computed what was exported
    save_parity_cases(bundle_copy / SELFTEST_FILE, cases)
    write_checksums(bundle_copy)
    assert main(["inspect", str(bundle_copy)]) == 2
    error = capsys.readouterr().err
    assert "self-test failed" in error and "q_value" in error


def test_bundle_without_a_recorded_self_test_is_checked_onnx_against_torchscript(bundle_copy, capsys):
    metadata = json.loads((bundle_copy / METADATA_FILE).read_text())
    del metadata["selftest"]
    (bundle_copy / METADATA_FILE).write_text(json.dumps(metadata))
    (bundle_copy / SELFTEST_FILE).unlink()
    write_checksums(bundle_copy)
    assert main(["inspect", str(bundle_copy)]) == 0
    out = capsys.readouterr().out
    assert "onnx vs recorded outputs: skipped (the bundle records no self-test)" in out
    assert "onnx vs torchscript: OK (K = 1, 5;" in out


def test_inspect_runs_without_torch(mlp_export):
    # torch = None in sys.modules makes every `import torch` raise ImportError.
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from exporters.cli import main\n"
        f"code = main(['inspect', {str(mlp_export.bundle)!r}])\n"
        "assert 'torch' not in {name.split('.')[0] for name, m in sys.modules.items() if m is not None}\n"
        "sys.exit(code)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "onnx vs recorded eager PyTorch outputs: OK" in run.stdout
    assert "torchscript vs onnx: skipped (torch is not importable)" in run.stdout


def test_checksum_file_lists_the_self_test_inputs(mlp_export):
    assert SELFTEST_FILE in (mlp_export.bundle / CHECKSUMS_FILE).read_text()
    cases = load_parity_cases(mlp_export.bundle / SELFTEST_FILE)
    assert [case.num_candidates for case in cases] == [1, 5, 32]
    assert all(np.isfinite(case.reference["q_value"]).all() for case in cases)


def test_inspect_runs_both_self_tests_on_a_chunked_bundle(chunked_mlp_export, capsys):
    assert main(["inspect", str(chunked_mlp_export.bundle)]) == 0
    out = capsys.readouterr().out
    assert "onnx vs recorded eager PyTorch outputs: OK (K = 1, 5, 32" in out
    assert "onnx vs torchscript: OK" in out
    cases = load_parity_cases(chunked_mlp_export.bundle / SELFTEST_FILE)
    assert [case.noise.shape[1:] for case in cases] == [(1, 5, 4), (5, 5, 4), (32, 5, 4)]
    assert [case.reference["action"].shape[1:] for case in cases] == [(5, 4)] * 3


def test_chunked_bundle_without_a_recorded_self_test_probes_chunk_shaped_noise(
    tmp_path, chunked_mlp_export, capsys
):
    bundle = Path(shutil.copytree(chunked_mlp_export.bundle, tmp_path / "bundle"))
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    del metadata["selftest"]
    (bundle / METADATA_FILE).write_text(json.dumps(metadata))
    (bundle / SELFTEST_FILE).unlink()
    write_checksums(bundle)
    assert main(["inspect", str(bundle)]) == 0
    assert "onnx vs torchscript: OK (K = 1, 5;" in capsys.readouterr().out


def test_bundles_written_before_action_chunks_inspect_unchanged(bundle_copy, capsys):
    metadata = json.loads((bundle_copy / METADATA_FILE).read_text())
    del metadata["action_horizon"], metadata["control_period_s"]  # as every bundle before chunks
    (bundle_copy / METADATA_FILE).write_text(json.dumps(metadata))
    write_checksums(bundle_copy)
    assert main(["inspect", str(bundle_copy)]) == 0
    embedded = Path(__file__).resolve().parents[2] / "server" / "default_model" / "cube-single" / "1"
    assert "action_horizon" not in json.loads((embedded / METADATA_FILE).read_text())
    assert main(["inspect", str(embedded)]) == 0
    assert "onnx vs recorded eager PyTorch outputs: OK" in capsys.readouterr().out


@pytest.mark.parametrize("horizon", [0, 2.5, True, "5"])
def test_a_bad_action_horizon_is_refused(bundle_copy, horizon, capsys):
    metadata = json.loads((bundle_copy / METADATA_FILE).read_text())
    metadata["action_horizon"] = horizon
    (bundle_copy / METADATA_FILE).write_text(json.dumps(metadata))
    write_checksums(bundle_copy)
    assert main(["inspect", str(bundle_copy)]) == 2
    assert "action_horizon must be an integer >= 1" in capsys.readouterr().err
