"""CandidateBudget: the largest K whose predicted queue + inference time meets the latency target."""

from __future__ import annotations

from server.latency_target import CandidateBudget


def test_default_k_while_the_target_is_met_and_fewer_candidates_as_the_queue_grows():
    budget = CandidateBudget(target_ms=10.0, default_k=8, inference_ms=8.0)  # 1 ms per candidate
    assert budget.candidates() == 8  # 0 queue + 8 ms inference <= 10 ms
    for _ in range(200):
        budget.observe(queue_ms=6.0, inference_ms=8.0, num_candidates=8)
    assert budget.candidates() == 4  # 6 ms queue leaves 4 ms: 4 candidates
    for _ in range(200):
        budget.observe(queue_ms=30.0, inference_ms=4.0, num_candidates=4)
    assert budget.candidates() == 1  # never below 1, however late
    for _ in range(200):
        budget.observe(queue_ms=0.0, inference_ms=1.0, num_candidates=1)
    assert budget.candidates() == 8  # back to the default once there is room, never above it


def test_the_first_estimate_is_the_warm_up_timing():
    assert CandidateBudget(target_ms=2.0, default_k=4, inference_ms=4.0).candidates() == 2
