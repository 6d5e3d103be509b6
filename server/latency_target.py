"""`--latency-target-ms`: fewer candidates when the measured latency would miss the target.

For a request that did not name K, the model version serves the largest K (at most the
bundle's default, at least 1) whose predicted queue + inference time meets the target. The
prediction is `queue_ms + inference_ms_per_candidate * K`, both exponentially weighted means
over this version's recent answers; inference time is taken as proportional to K, since K
multiplies the critic's work on every row (a fixed per-call cost only makes the prediction
pessimistic, so K is lowered a little early, never late). Before any answer, the estimate is
the warm-up's timing of one observation at the default K, with no queue.
"""

from __future__ import annotations

WEIGHT = 0.1  # of the newest answer in the running means: about the last 10 answers count


class CandidateBudget:
    def __init__(self, target_ms: float, default_k: int, inference_ms: float):
        self.target_ms = target_ms
        self.default_k = default_k
        self.queue_ms = 0.0
        self.per_candidate_ms = inference_ms / default_k

    def candidates(self) -> int:
        """The K to use now for a request that named none."""
        spare_ms = self.target_ms - self.queue_ms
        if spare_ms >= self.per_candidate_ms * self.default_k:
            return self.default_k
        return max(1, min(self.default_k, int(spare_ms / self.per_candidate_ms)))

    def observe(self, queue_ms: float, inference_ms: float, num_candidates: int) -> None:
        self.queue_ms += WEIGHT * (queue_ms - self.queue_ms)
        self.per_candidate_ms += WEIGHT * (inference_ms / num_candidates - self.per_candidate_ms)
