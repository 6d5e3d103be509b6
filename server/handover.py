"""Smooth hand-overs between consecutive chunks: best of K by Q - lambda x distance to the previous chunk's rest.

Alignment (real-time chunking, Black et al. 2025): the client executed s actions of the
previous chunk A before it asked, so A[s:] is its unexecuted rest R, and step i of a new
chunk B is planned for the same control step as R[i]. Inference takes d steps, during which
the robot keeps executing R[:d]; B takes over at step d. A candidate is therefore scored on
the overlapping steps it will really execute, B[d:r] against R[d:r] (r = len(R)); when the
rest runs out before the new chunk arrives (r <= d) the robot holds R[-1] and B[d] is
compared with that. Scoring is the bidirectional-decoding idea (kinetix `bid_action`) with
mfql's critic kept in the score; RTC's guided denoising needs gradients a one-step ONNX
policy does not have. Pinning copies R[:d] into B[:d], so the answer says what really runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Handover:
    """The hand-over in force for one request (request values over the session's)."""

    weight: float  # lambda; 0 with pin off: today's best of K by Q alone
    scale: str  # "q": lambda in units of Q; "spread": in units of the K candidates' Q spread
    delay_steps: int | None  # d; None: estimated from measured latency and the control period
    execute_steps: int | None  # s; None: from the client's step index, else the time since the last answer
    pin: bool

    @property
    def on(self) -> bool:
        return self.weight > 0 or self.pin


def handover_distance(candidates: np.ndarray, rest: np.ndarray, delay: int) -> np.ndarray:
    """Mean absolute difference [K] between each candidate [K, H, d] and the rest [r, d] on the steps it executes."""
    horizon = candidates.shape[1]
    overlap = min(len(rest), horizon)
    if delay < overlap:
        diff = candidates[:, delay:overlap] - rest[delay:overlap]
    else:  # the rest runs out first: the robot holds its last planned action until B[d]
        diff = candidates[:, min(delay, horizon - 1)][:, None] - rest[-1]
    return np.abs(diff).mean(axis=(1, 2))


HANDOVER_SCALES = ("q", "spread")


def q_spread(q_values: np.ndarray) -> float:
    """max - min of the K candidates' Q: how much the critic's choice is worth at this observation."""
    return float(q_values.max() - q_values.min())


def choose(q_values: np.ndarray, distance: np.ndarray, weight: float, scale: str = "q") -> int:
    """Index of the best candidate by Q - lambda x distance (lowest index on ties, as the graph's argmax).

    `scale` "q": lambda = `weight`, in units of Q per unit of mean absolute action difference,
    so its good values follow the reward's scale (dense puzzle-3x3: 1000; docs/control-loop.md).
    "spread": lambda = `weight` x `q_spread`, so the score ranks (Q - min Q) / spread - weight x
    distance: a candidate `1 / weight` further from the rest loses the whole range of Q among
    the candidates, whatever the reward's units. When every candidate has the same Q (spread 0)
    the distance alone decides.
    """
    if scale == "spread":
        spread = q_spread(q_values)
        if spread <= 0.0:
            return int(np.argmin(distance)) if weight > 0 else 0
        return int(np.argmax((q_values - q_values.min()) / spread - weight * distance))
    return int(np.argmax(q_values - weight * distance))


def pinned(chunk: np.ndarray, rest: np.ndarray, delay: int) -> np.ndarray:
    """`chunk` [H, d] whose first min(d, r, H) steps are the rest's: they execute while the server computes."""
    steps = min(delay, len(rest), len(chunk))
    if steps == 0:
        return chunk
    out = chunk.copy()
    out[:steps] = rest[:steps]
    return out


def estimate_delay(latency_ms: float, control_period_s: float | None) -> int:
    """Control steps that pass during one answer: ceil(latency / period); 0 when the period is unknown."""
    if control_period_s is None or latency_ms <= 0:
        return 0
    return math.ceil(latency_ms / 1e3 / control_period_s)


def estimate_executed(elapsed_s: float, control_period_s: float | None, horizon: int) -> int | None:
    """Steps of the last chunk executed since it was served, from the elapsed time; None without a period."""
    if control_period_s is None:
        return None
    return min(max(round(elapsed_s / control_period_s), 1), horizon)
