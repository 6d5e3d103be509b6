"""Does an exported graph compute what the eager model computes? Tolerances, comparison, self-test cases.

Torch-free (numpy only): the same comparison runs at export time against eager PyTorch and
later, in `mfql-export inspect`, against the reference outputs recorded in `selftest.npz`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporters.bundle import OUTPUT_NAMES
from exporters.errors import BundleError

Outputs = dict[str, np.ndarray]  # output name -> array, keyed by OUTPUT_NAMES
Runtime = Callable[[np.ndarray, np.ndarray], Outputs]  # (observation, noise) -> outputs


@dataclass(frozen=True)
class Tolerance:
    """|got - reference| <= atol + rtol |reference|, element-wise, for every output."""

    atol: float
    rtol: float

    def as_dict(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol}


# float32: the graph must not change the model. The small rtol keeps large trained Q values
# (|Q| ~ 100, where one float32 ulp is ~8e-6) from failing on summation order alone.
FLOAT32_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-6)
# float16 weights and activations carry ~3 significant digits. On the reference-size DiT
# (tests/exporters/test_fp16.py) the worst deviations over 2304 rows were 1e-3 on candidates
# and 3e-3 on Q (|Q| < 3); this leaves 3-10x headroom for trained networks' larger activations.
# About 0.3 % of rows met a near tie and chose another candidate (accepted, see below).
FLOAT16_TOLERANCE = Tolerance(atol=1e-2, rtol=1e-2)
TOLERANCES = {"float32": FLOAT32_TOLERANCE, "float16": FLOAT16_TOLERANCE}


@dataclass(frozen=True)
class ParityCase:
    """One fixed input of the self-test and the outputs the eager model produced for it."""

    observation: np.ndarray  # [B, obs_dim] float32
    noise: np.ndarray  # [B, K, action_dim] float32 ([B, K, H, action_dim] for a chunked policy)
    reference: Outputs

    @property
    def num_candidates(self) -> int:
        return int(self.noise.shape[1])


def _within(reference: np.ndarray, got: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    return np.abs(got - reference) <= tolerance.atol + tolerance.rtol * np.abs(reference)


def _all_but_first_axes(matches: np.ndarray) -> np.ndarray:
    """Per row (axis 0): every element matches, over the action's axes ([d], or [H, d] for a chunk)."""
    return matches.reshape(matches.shape[0], -1).all(axis=-1)


def _chosen_among_candidates(reference: Outputs, got: Outputs, tolerance: Tolerance) -> np.ndarray:
    """Per row: the action (a whole chunk when chunked) is one of the reference candidates."""
    matches = _within(reference["candidates"], got["action"][:, None], tolerance)
    per_candidate = matches.reshape(*matches.shape[:2], -1).all(axis=-1)
    return per_candidate.any(axis=-1)


def output_mismatches(reference: Outputs, got: Outputs, tolerance: Tolerance) -> list[str]:
    """What differs beyond `tolerance`, one message per output; empty when the outputs agree.

    An action may differ from the reference's when the argmax met a near tie: it is accepted
    if it is one of the reference candidates and its Q is within tolerance of the best Q.
    """
    problems = []
    for name in OUTPUT_NAMES:
        if got[name].shape != reference[name].shape:
            problems.append(f"{name}: shape {got[name].shape}, expected {reference[name].shape}")
    if problems:
        return problems
    for name in ("q_value", "candidates"):
        if not _within(reference[name], got[name], tolerance).all():
            worst = float(np.abs(got[name] - reference[name]).max())
            problems.append(f"{name}: max |diff| {worst:.3g} exceeds {tolerance.as_dict()}")
    same_action = _all_but_first_axes(_within(reference["action"], got["action"], tolerance))
    near_tie = _within(reference["q_value"], got["q_value"], tolerance) & _chosen_among_candidates(
        reference, got, tolerance
    )
    bad_rows = np.flatnonzero(~(same_action | near_tie))
    if bad_rows.size:
        problems.append(f"action: rows {bad_rows.tolist()} chose a different candidate than the reference")
    return problems


def max_abs_difference(reference: Outputs, got: Outputs) -> float:
    """Largest deviation of q_value and candidates; the action is a gather of the candidates
    and may legitimately be another one on a near tie."""
    return max(float(np.abs(got[name] - reference[name]).max()) for name in ("q_value", "candidates"))


@dataclass(frozen=True)
class ParityReport:
    max_abs_difference: float
    problems: list[str]  # empty when every case agrees within tolerance
    candidate_counts: list[int]


def compare_runtime(runtime: Runtime, cases: list[ParityCase], tolerance: Tolerance) -> ParityReport:
    """Run every case through `runtime` and compare with its reference outputs."""
    worst, problems = 0.0, []
    for case in cases:
        got = runtime(case.observation, case.noise)
        mismatches = output_mismatches(case.reference, got, tolerance)
        problems += [f"K={case.num_candidates}: {message}" for message in mismatches]
        if not mismatches:
            worst = max(worst, max_abs_difference(case.reference, got))
    return ParityReport(worst, problems, [case.num_candidates for case in cases])


def save_parity_cases(path: Path, cases: list[ParityCase]) -> None:
    arrays = {}
    for case in cases:
        prefix = f"K{case.num_candidates}."
        arrays[prefix + "observation"] = case.observation
        arrays[prefix + "noise"] = case.noise
        arrays.update({prefix + name: case.reference[name] for name in OUTPUT_NAMES})
    np.savez(path, **arrays)


def load_parity_cases(path: Path) -> list[ParityCase]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable self-test file ({exc})") from exc
    prefixes = sorted({key.split(".", 1)[0] for key in arrays})
    try:
        cases = [
            ParityCase(
                arrays[f"{p}.observation"],
                arrays[f"{p}.noise"],
                {name: arrays[f"{p}.{name}"] for name in OUTPUT_NAMES},
            )
            for p in prefixes
        ]
    except KeyError as exc:
        raise BundleError(f"{path}: self-test case is missing array {exc}") from exc
    return sorted(cases, key=lambda case: case.num_candidates)
