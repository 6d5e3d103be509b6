"""Does an int8 ONNX bundle pay on this CPU? Speed and parity of ONNX Runtime's dynamic int8
quantisation of a bundle's graph against the float32 graph, at the serving shapes.

`onnxruntime.quantization.quantize_dynamic` stores MatMul weights as int8 (one scale per tensor;
per-channel scales are refused by ONNX Runtime's kernel for the critic ensemble's batched
MatMuls) and quantises activations on the fly. The report gives, per (B, K): milliseconds of
both graphs and their ratio, the largest and mean |difference| of the candidates (the policy's
own error), of the chosen action, and of Q, and the share of observations whose best-of-K choice
is unchanged; and whether an answer depends on its batch-mates (int8 activations are quantised
with one scale per call). Observations come from a dataset file (`--dataset`, the realistic case: the
graph normalises raw observations) or, without one, the bundle's own self-test rows.

    python benchmarks/quantization.py --bundle server/default_model/cube-single/1 \
        --dataset data/cube-single-play-v0-val.npz

Reports ratios measured in one run; absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((1, 5), (256, 1), (256, 5))


def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def milliseconds(sess: onnxruntime.InferenceSession, feeds: dict, budget_s: float) -> float:
    sess.run(None, feeds)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s or calls < 3:
        sess.run(None, feeds)
        calls += 1
    return (time.perf_counter() - start) / calls * 1e3


def chosen(candidates: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Index of the candidate each row's answer is ([B, K, d], [B, d] -> [B])."""
    return np.abs(candidates - actions[:, None]).sum(-1).argmin(axis=1)


def compare(fp32, int8, observations: np.ndarray, batch: int, k: int, rng, budget_s: float) -> dict:
    rows = rng.choice(len(observations), batch)
    action_dim = fp32.get_inputs()[1].shape[-1]
    feeds = {
        "observation": observations[rows].astype(np.float32),
        "noise": rng.standard_normal((batch, k, action_dim)).astype(np.float32),
    }
    (a32, q32, c32), (a8, q8, c8) = fp32.run(None, feeds), int8.run(None, feeds)
    ms32, ms8 = milliseconds(fp32, feeds, budget_s), milliseconds(int8, feeds, budget_s)
    candidates, actions, q = np.abs(c32 - c8), np.abs(a32 - a8), np.abs(q32 - q8)
    return {
        "B": batch,
        "K": k,
        "fp32_ms": round(ms32, 3),
        "int8_ms": round(ms8, 3),
        "speedup": round(ms32 / ms8, 2),
        "candidate_max_abs_diff": float(candidates.max()),
        "candidate_mean_abs_diff": float(candidates.mean()),
        "action_max_abs_diff": float(actions.max()),
        "q_max_abs_diff": float(q.max()),
        "q_range": [float(q32.min()), float(q32.max())],
        "same_choice": float((chosen(c32, a32) == chosen(c8, a8)).mean()),
    }


def batch_dependence(sess: onnxruntime.InferenceSession, observations: np.ndarray, rows: int = 64) -> float:
    """Largest |action difference| between running `rows` observations one by one and as one batch."""
    action_dim = sess.get_inputs()[1].shape[-1]
    observation = observations[np.arange(rows) % len(observations)].astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((rows, 1, action_dim)).astype(np.float32)
    alone = np.concatenate(
        [
            sess.run(None, {"observation": observation[i : i + 1], "noise": noise[i : i + 1]})[0]
            for i in range(rows)
        ]
    )
    together = sess.run(None, {"observation": observation, "noise": noise})[0]
    return float(np.abs(alone - together).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundle", type=Path, default=ROOT / "server" / "default_model" / "cube-single" / "1"
    )
    parser.add_argument("--dataset", type=Path, default=None, help="npz with 'observations' (raw)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per graph and shape")
    args = parser.parse_args(argv)

    source = args.bundle / "policy.onnx"
    if args.dataset is not None:
        observations = np.load(args.dataset)["observations"]
    else:
        observations = np.load(args.bundle / "selftest.npz")["K1.observation"]
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "policy.int8.onnx"
        quantize_dynamic(source, quantized, weight_type=QuantType.QInt8, per_channel=False)
        fp32, int8 = session(source, args.threads), session(quantized, args.threads)
        rng = np.random.default_rng(0)
        rows = [compare(fp32, int8, observations, b, k, rng, args.budget) for b, k in SHAPES]
        dependence = {
            "fp32": batch_dependence(fp32, observations),
            "int8": batch_dependence(int8, observations),
        }
    print(
        "| B | K | fp32 ms | int8 ms | speedup | candidates max / mean abs diff | action max diff "
        "| Q max diff (Q range) | same best-of-K choice |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['B']} | {r['K']} | {r['fp32_ms']} | {r['int8_ms']} | {r['speedup']}x "
            f"| {r['candidate_max_abs_diff']:.3f} / {r['candidate_mean_abs_diff']:.4f} "
            f"| {r['action_max_abs_diff']:.3f} | {r['q_max_abs_diff']:.2f} ({r['q_range'][0]:.1f}..{r['q_range'][1]:.1f}) "
            f"| {r['same_choice']:.2f} |"
        )
    print(
        f"\nthe same 64 observations one by one vs as one batch, max |action diff|: "
        f"fp32 {dependence['fp32']:.3g}, int8 {dependence['int8']:.3g}"
    )
    print(json.dumps({"shapes": rows, "batch_dependence": dependence}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
