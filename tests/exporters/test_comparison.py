"""The parity rule itself (exporters/parity.py), on hand-made outputs: no torch, no graphs."""

from __future__ import annotations

import numpy as np

from exporters.parity import FLOAT32_TOLERANCE, Tolerance, output_mismatches

LOOSE = Tolerance(atol=1e-2, rtol=0.0)


def _outputs(
    candidates: list[list[float]], q_values: list[float], chosen: list[int]
) -> dict[str, np.ndarray]:
    candidates_array = np.asarray(candidates, np.float32)[:, :, None]  # [B, K, 1]
    rows = np.arange(len(chosen))
    return {
        "action": candidates_array[rows, chosen],
        "q_value": np.asarray(q_values, np.float32),
        "candidates": candidates_array,
    }


def test_identical_outputs_agree():
    reference = _outputs([[0.1, 0.5]], [1.0], [1])
    assert output_mismatches(reference, reference, FLOAT32_TOLERANCE) == []


def test_a_deviation_beyond_tolerance_is_reported_with_its_size():
    reference = _outputs([[0.1, 0.5]], [1.0], [1])
    got = _outputs([[0.1, 0.5]], [1.001], [1])
    assert output_mismatches(reference, got, FLOAT32_TOLERANCE) == [
        "q_value: max |diff| 0.001 exceeds {'atol': 1e-05, 'rtol': 1e-06}"
    ]


def test_another_candidate_is_accepted_only_on_a_near_tie():
    reference = _outputs([[0.1, 0.5], [0.1, 0.5]], [1.0, 1.0], [1, 1])
    near_tie = _outputs([[0.1, 0.5], [0.1, 0.5]], [0.995, 1.0], [0, 1])  # Q within 1e-2 of the best
    assert output_mismatches(reference, near_tie, LOOSE) == []
    worse = _outputs([[0.1, 0.5], [0.1, 0.5]], [1.0, 1.0], [1, 0])
    worse["q_value"][1] = 0.9
    assert output_mismatches(reference, worse, LOOSE) == [
        "q_value: max |diff| 0.1 exceeds {'atol': 0.01, 'rtol': 0.0}",
        "action: rows [1] chose a different candidate than the reference",
    ]


def test_shape_mismatch_names_expected_and_received():
    reference = _outputs([[0.1, 0.5]], [1.0], [1])
    got = _outputs([[0.1, 0.5, 0.2]], [1.0], [1])
    assert output_mismatches(reference, got, LOOSE) == ["candidates: shape (1, 3, 1), expected (1, 2, 1)"]
