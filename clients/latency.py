"""Latency percentiles, reported the same way by ``mfql-rollout`` and ``mfql-bench``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_summary_ms(seconds: Sequence[float]) -> dict:
    """Count, mean, p50/p90/p99 and max of ``seconds``, in milliseconds (None when empty)."""
    if len(seconds) == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "count": int(ms.size),
        "mean": float(ms.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(ms.max()),
    }
