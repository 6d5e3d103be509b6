"""Read and verify one bundle directory (docs/bundle-format.md) before it may serve.

Checks, in order: SHA256SUMS (every listed file present and intact, no unlisted file),
metadata.json against the format's schema, then, once a runtime is loaded, the recorded
self-test (`selftest.npz`: inputs and the exporting model's outputs) within the bundle's
tolerance. The server reads bundles on its own (it imports neither `exporters` nor
`training`); the format document is the contract both sides follow.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.errors import BundleError

FORMAT_VERSION = 1
CHECKSUMS_FILE = "SHA256SUMS"
METADATA_FILE = "metadata.json"
INPUT_NAMES = ("observation", "noise")
OUTPUT_NAMES = ("action", "q_value", "candidates")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Self-test tolerance when metadata records none, by precision (the exporter's defaults).
DEFAULT_TOLERANCES = {"float32": (1e-5, 1e-6), "float16": (1e-2, 1e-2)}

Outputs = dict[str, np.ndarray]
Runtime = Callable[[np.ndarray, np.ndarray], Outputs]


class TensorSpec(BaseModel):
    name: str
    dtype: str
    shape: list[int | str]


class BundleMetadata(BaseModel):
    """The documented keys of metadata.json; unknown keys are kept (readers ignore them)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format_version: int
    name: str = Field(pattern=MODEL_NAME_PATTERN.pattern)
    obs_dim: int = Field(ge=1)
    action_dim: int = Field(ge=1)
    action_low: list[float]
    action_high: list[float]
    default_num_candidates: int = Field(ge=1)
    max_num_candidates: int = Field(ge=1)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: dict[str, str]
    policy_type: str | None = None
    env_name: str | None = None
    success_rate: float | None = None
    training_step: int | None = None
    precision: str = "float32"
    # Actions per observation (a chunk when > 1); bundles from before chunks have none: 1.
    action_horizon: int = Field(1, ge=1)
    control_period_s: float | None = Field(None, gt=0)  # seconds per action; None: unknown
    # Largest change of each action dimension per control step; bundles without it: no limit.
    max_action_delta: list[float] | None = None

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """One answer's action and one candidate's noise: (action_dim,), or (H, action_dim)."""
        if self.action_horizon == 1:
            return (self.action_dim,)
        return (self.action_horizon, self.action_dim)

    @model_validator(mode="after")
    def _consistent(self) -> BundleMetadata:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version is {self.format_version}, this server reads {FORMAT_VERSION}")
        for bound in (self.action_low, self.action_high):
            if len(bound) != self.action_dim:
                raise ValueError(f"action bounds need action_dim={self.action_dim} values, got {len(bound)}")
        if any(low > high for low, high in zip(self.action_low, self.action_high, strict=True)):
            raise ValueError("action_low exceeds action_high")
        if self.max_action_delta is not None and (
            len(self.max_action_delta) != self.action_dim or min(self.max_action_delta) <= 0
        ):
            raise ValueError(f"max_action_delta needs action_dim={self.action_dim} values > 0")
        if not 1 <= self.default_num_candidates <= self.max_num_candidates:
            raise ValueError(
                f"default_num_candidates={self.default_num_candidates} is not in "
                f"[1, max_num_candidates={self.max_num_candidates}]"
            )
        self._check_signature()
        return self

    def _check_signature(self) -> None:
        inputs = {t.name: t for t in self.inputs}
        outputs = {t.name: t for t in self.outputs}
        if set(INPUT_NAMES) - inputs.keys() or set(OUTPUT_NAMES) - outputs.keys():
            raise ValueError(
                f"inputs must be {list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}, "
                f"got {sorted(inputs)} and {sorted(outputs)}"
            )
        if inputs["observation"].shape[-1] != self.obs_dim:
            raise ValueError("the observation tensor's shape disagrees with obs_dim")
        chunk = list(self.chunk_shape)
        declared = {
            "noise": inputs["noise"].shape[2:],
            "action": outputs["action"].shape[1:],
            "candidates": outputs["candidates"].shape[2:],
        }
        wrong = {name: shape for name, shape in declared.items() if shape != chunk}
        if wrong:
            raise ValueError(
                f"tensor shapes {wrong} after the B (and K) axes disagree with action_dim={self.action_dim}, "
                f"action_horizon={self.action_horizon}: expected {chunk}"
            )


@dataclass(frozen=True)
class SelftestCase:
    observation: np.ndarray  # [B, obs_dim]
    noise: np.ndarray  # [B, K, *chunk_shape]
    reference: Outputs


@dataclass(frozen=True)
class Bundle:
    """A bundle whose files and metadata passed verification (its graph is checked when loaded)."""

    path: Path
    metadata: BundleMetadata
    sha256: str  # digest of SHA256SUMS, so it identifies every file of the bundle
    selftest: list[SelftestCase]  # empty when the bundle records no self-test
    atol: float
    rtol: float

    def file(self, kind: str) -> Path:
        """The verified file of `kind` ("onnx", "torchscript"); BundleError when the bundle has none."""
        name = self.metadata.files.get(kind)
        if name is None:
            raise BundleError(f"{self.path}: the bundle has no {kind} file (files: {self.metadata.files})")
        return self.path / name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checksums(bundle_dir: Path) -> dict[str, str]:
    path = bundle_dir / CHECKSUMS_FILE
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: missing {CHECKSUMS_FILE}")
    listed = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line:
            continue
        digest, separator, name = line.partition("  ")
        if not separator or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or "/" in name:
            raise BundleError(f"{path}:{number}: expected '<64 hex digits>  <file name>', got {line!r}")
        listed[name] = digest
    return listed


def verify_checksums(bundle_dir: Path) -> dict[str, str]:
    """The listed files and digests; BundleError on a missing, altered or unlisted file."""
    listed = read_checksums(bundle_dir)
    for name, expected in listed.items():
        if not (bundle_dir / name).is_file():
            raise BundleError(f"{bundle_dir}: {name} is listed in {CHECKSUMS_FILE} but missing")
        actual = file_sha256(bundle_dir / name)
        if actual != expected:
            raise BundleError(f"{bundle_dir / name}: SHA-256 {actual}, {CHECKSUMS_FILE} says {expected}")
    present = {p.name for p in bundle_dir.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE}
    unlisted = sorted(present - listed.keys())
    if unlisted:
        raise BundleError(f"{bundle_dir}: files not listed in {CHECKSUMS_FILE}: {', '.join(unlisted)}")
    return listed


def read_metadata(bundle_dir: Path) -> BundleMetadata:
    path = bundle_dir / METADATA_FILE
    try:
        return BundleMetadata.model_validate(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise BundleError(f"{bundle_dir}: missing {METADATA_FILE}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'metadata'}: {error['msg']}"
            for error in exc.errors()
        )
        raise BundleError(f"{path}: {problems}") from exc


def load_selftest(path: Path) -> list[SelftestCase]:
    """Cases stored as `K<k>.observation`, `K<k>.noise`, `K<k>.<output>` (the exporter's layout)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable self-test file ({exc})") from exc
    prefixes = sorted({key.split(".", 1)[0] for key in arrays})
    try:
        return [
            SelftestCase(
                arrays[f"{p}.observation"].astype(np.float32, copy=False),
                arrays[f"{p}.noise"].astype(np.float32, copy=False),
                {name: arrays[f"{p}.{name}"] for name in OUTPUT_NAMES},
            )
            for p in prefixes
        ]
    except KeyError as exc:
        raise BundleError(f"{path}: self-test case is missing array {exc}") from exc


def read_bundle(bundle_dir: Path) -> Bundle:
    """Verify checksums and metadata, load the self-test cases; BundleError says what is wrong."""
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a directory")
    listed = verify_checksums(bundle_dir)
    metadata = read_metadata(bundle_dir)
    selftest_info = metadata.model_extra.get("selftest") or {}
    selftest_file = selftest_info.get("file")
    for name in [*metadata.files.values(), *([selftest_file] if selftest_file else [])]:
        if name not in listed:
            raise BundleError(f"{bundle_dir}: metadata names {name!r}, which {CHECKSUMS_FILE} does not list")
    default_atol, default_rtol = DEFAULT_TOLERANCES.get(metadata.precision, DEFAULT_TOLERANCES["float32"])
    return Bundle(
        path=bundle_dir,
        metadata=metadata,
        sha256=file_sha256(bundle_dir / CHECKSUMS_FILE),
        selftest=load_selftest(bundle_dir / selftest_file) if selftest_file else [],
        atol=float(selftest_info.get("atol", default_atol)),
        rtol=float(selftest_info.get("rtol", default_rtol)),
    )


def _within(reference: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    return np.abs(got - reference) <= atol + rtol * np.abs(reference)


def _per_row(matches: np.ndarray) -> np.ndarray:
    return matches.reshape(matches.shape[0], -1).all(axis=-1)


def case_mismatches(case: SelftestCase, got: Outputs, atol: float, rtol: float) -> list[str]:
    """What differs beyond tolerance. An action may differ on a near tie of the argmax: it is
    accepted when it is one of the reference candidates and its Q matches the reference Q."""
    reference = case.reference
    shapes = [
        f"{name}: shape {got[name].shape}, expected {reference[name].shape}"
        for name in OUTPUT_NAMES
        if got[name].shape != reference[name].shape
    ]
    if shapes:
        return shapes
    problems = [
        f"{name}: max |diff| {float(np.abs(got[name] - reference[name]).max()):.3g} "
        f"exceeds atol {atol:g} rtol {rtol:g}"
        for name in ("q_value", "candidates")
        if not _within(reference[name], got[name], atol, rtol).all()
    ]
    same = _per_row(_within(reference["action"], got["action"], atol, rtol))
    among = _within(reference["candidates"], got["action"][:, None], atol, rtol)
    among = among.reshape(*among.shape[:2], -1).all(-1).any(-1)  # a whole chunk is one candidate
    near_tie = among & _within(reference["q_value"], got["q_value"], atol, rtol)
    bad_rows = np.flatnonzero(~(same | near_tie))
    if bad_rows.size:
        problems.append(f"action: rows {bad_rows.tolist()} chose another candidate than the reference")
    return problems


def run_selftest(bundle: Bundle, runtime: Runtime) -> str:
    """Run every recorded case through `runtime`; a summary line, or BundleError naming each mismatch."""
    if not bundle.selftest:
        return "no self-test recorded in the bundle"
    problems = []
    for case in bundle.selftest:
        got = runtime(case.observation, case.noise)
        k = case.noise.shape[1]
        problems += [f"K={k}: {p}" for p in case_mismatches(case, got, bundle.atol, bundle.rtol)]
    if problems:
        raise BundleError(f"{bundle.path}: self-test failed: {'; '.join(problems)}")
    counts = ", ".join(str(case.noise.shape[1]) for case in bundle.selftest)
    return f"self-test passed (K = {counts}; atol {bundle.atol:g} rtol {bundle.rtol:g})"
