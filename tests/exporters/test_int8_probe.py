"""benchmarks/quantization.py measures an int8 copy of a real bundle against its float32 graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_int8_probe_quantizes_the_default_bundle_and_reports_parity():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quantization.py"), "--budget", "0.01"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = report["shapes"]
    assert [(r["B"], r["K"]) for r in rows] == [(1, 5), (256, 1), (256, 5)]
    for row in rows:
        assert row["fp32_ms"] > 0 and row["int8_ms"] > 0
        # int8 weights change the answers (the probe measures a real quantised graph) but
        # stay in the action box's scale on the bundle's own self-test observations
        assert 0 < row["candidate_max_abs_diff"] < 1.0
        assert 0.0 <= row["same_choice"] <= 1.0
    assert "| 256 | 5 |" in result.stdout
    assert report["batch_dependence"]["fp32"] == 0.0  # float32: a row's answer ignores its batch-mates
