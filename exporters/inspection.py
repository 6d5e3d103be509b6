"""`mfql-export inspect`: read a bundle's metadata, verify its checksums, run its parity self-test.

Torch-free unless the bundle holds TorchScript and torch is importable: the ONNX graph is
checked against the eager outputs recorded at export time (`selftest.npz`), and TorchScript,
when it can run, against the ONNX graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporters.bundle import ONNX_FILE, chunk_shape, read_metadata, verify_checksums
from exporters.errors import BundleError
from exporters.parity import (
    TOLERANCES,
    ParityCase,
    ParityReport,
    Runtime,
    Tolerance,
    compare_runtime,
    load_parity_cases,
)
from exporters.runtimes import OnnxRuntimePolicy, TorchScriptPolicy, torch_available


@dataclass(frozen=True)
class InspectionReport:
    bundle_dir: Path
    metadata: dict
    verified_files: list[str]
    checks: list[str]  # one line per parity check run or skipped


def _tolerance(metadata: dict) -> Tolerance:
    recorded = metadata.get("selftest", {})
    default = TOLERANCES.get(metadata.get("precision", "float32"), TOLERANCES["float32"])
    return Tolerance(recorded.get("atol", default.atol), recorded.get("rtol", default.rtol))


def _probe_cases(metadata: dict) -> list[ParityCase]:
    """Inputs without reference outputs, for bundles that recorded no self-test."""
    rng = np.random.default_rng(0)
    cases = []
    for k in sorted({1, int(metadata["default_num_candidates"])}):
        observation = rng.standard_normal((4, metadata["obs_dim"])).astype(np.float32)
        noise = rng.standard_normal((4, k, *chunk_shape(metadata))).astype(np.float32)
        cases.append(ParityCase(observation, noise, {}))
    return cases


def _with_reference(cases: list[ParityCase], runtime: Runtime) -> list[ParityCase]:
    return [ParityCase(c.observation, c.noise, runtime(c.observation, c.noise)) for c in cases]


def _verdict(label: str, report: ParityReport, tolerance: Tolerance) -> str:
    """The report's line when it passed; BundleError naming every mismatch when it did not."""
    if report.problems:
        raise BundleError(f"self-test failed, {label}: {'; '.join(report.problems)}")
    counts = ", ".join(str(k) for k in report.candidate_counts)
    return (
        f"{label}: OK (K = {counts}; max |diff| {report.max_abs_difference:.2g}, "
        f"tolerance atol {tolerance.atol:g} rtol {tolerance.rtol:g})"
    )


def _named_files(metadata: dict, verified: list[str]) -> dict[str, str]:
    """Format -> file name; every named file must be covered by SHA256SUMS."""
    files = dict(metadata["files"])
    files.setdefault("onnx", ONNX_FILE)
    selftest = metadata.get("selftest", {}).get("file")
    for name in [*files.values(), *([selftest] if selftest else [])]:
        if name not in verified:
            raise BundleError(f"metadata names {name!r}, which SHA256SUMS does not list")
    return files


def inspect_bundle(bundle_dir: Path) -> InspectionReport:
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a directory")
    verified = verify_checksums(bundle_dir)
    metadata = read_metadata(bundle_dir)
    files = _named_files(metadata, verified)
    tolerance = _tolerance(metadata)
    onnx_runtime = OnnxRuntimePolicy(bundle_dir / files["onnx"])
    checks = []
    selftest = metadata.get("selftest", {}).get("file")
    if selftest is not None:
        cases = load_parity_cases(bundle_dir / selftest)
        report = compare_runtime(onnx_runtime, cases, tolerance)
        checks.append(_verdict("onnx vs recorded eager PyTorch outputs", report, tolerance))
    else:
        cases = _probe_cases(metadata)
        checks.append("onnx vs recorded outputs: skipped (the bundle records no self-test)")
    if "torchscript" not in files:
        checks.append("torchscript: not in this bundle")
    elif not torch_available():
        checks.append("torchscript vs onnx: skipped (torch is not importable)")
    else:
        torchscript = TorchScriptPolicy(bundle_dir / files["torchscript"])
        report = compare_runtime(onnx_runtime, _with_reference(cases, torchscript), tolerance)
        checks.append(_verdict("onnx vs torchscript", report, tolerance))
    return InspectionReport(bundle_dir, metadata, verified, checks)
