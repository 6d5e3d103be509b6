"""benchmarks/serve.py --peers runs end to end: the no-op floor, plain FastAPI + onnxruntime, mfql
(default and --inline-below-us 0), one shared client, and the ratios the README reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_peers_benchmark_measures_every_server_and_reports_the_ratios():
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--peers", "--repository",
            str(ROOT / "server" / "default_model"), "--model", "cube-single", "--duration", "0.3", "--rounds", "1",
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    rows = report["rounds"][0]["rows"]
    for server in (
        "floor",
        "plain_onnxruntime",
        "mfql_rest",
        "mfql_ws",
        "mfql_rest_threaded",
        "mfql_ws_threaded",
    ):
        row = rows[f"{server}_c1"]
        assert row["throughput_rps"] > 0 and row["errors"] == {}, (server, row)
    assert set(report["median_ratios"]) >= {
        "rest_c32_throughput_vs_floor",
        "rest_c1_p50_vs_plain_onnxruntime",
        "ws_c1_p50_vs_floor_p50",
        "rest_c1_p50_inline_vs_threaded",
        "ws_c1_p50_inline_vs_threaded",
    }
    assert all(value > 0 for value in report["median_ratios"].values())


def test_handler_cpu_benchmark_calls_both_apps_and_reports_the_ratios():
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "handler_cpu.py"),
            "--requests", "32", "--rounds", "1", "--concurrency", "1,8",
        ],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for concurrency in ("c1", "c8"):
        row = report[concurrency]
        mfql, plain = row["mfql_cpu_us"], row["plain_cpu_us"]
        assert len(mfql) == len(plain) == 1 and mfql[0] > 0 and plain[0] > 0
        assert abs(row["cpu_ratio_mfql_vs_plain"] - mfql[0] / plain[0]) < 0.01
        assert abs(row["rate_ratio_mfql_vs_plain"] - row["mfql_per_s"][0] / row["plain_per_s"][0]) < 0.01
