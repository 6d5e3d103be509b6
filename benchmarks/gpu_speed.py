"""The device check of training and serving speed (issue 22): one prepared script for a lent GPU.

Times, on `--device` (default cuda):
- training steps/s of FQL, MFQL-MLP and MFQL-DiT (batch 256, K = 5, 4 x `--width` networks):
  the fused update eager (`FusedUpdate(compile=False)`), compiled (`torch.compile`), and
  compiled with CUDA graphs (`mode="reduce-overhead"`), plus `--seeds` seeds in one vmapped
  step (`mfql-train --seeds`) against one seed;
- serving: the embedded default model's `policy.onnx` under onnxruntime with the CUDA
  execution provider (the `[gpu]` extra) at B = 1 and 256, against the CPU provider;
- `mfql-train --device` end to end (`--train-agents`, default bon and fql, H = 5): a synthetic
  transitions file of puzzle-3x3's dims, a third of the steps on the device, the next third
  resumed on the CPU, the rest resumed on the device (checkpoints continue on either); the
  loop's steps/s (CPU sampling and logging included) from its metrics.csv.

    python benchmarks/gpu_speed.py [--device cuda] [--steps 50] [--width 256] [--seeds 4]

Prints one JSON object (and writes it to `--out` if given). `--device cpu` runs the same
script here (tests/training/test_cli_end_to_end.py runs it at a tiny size), so the prepared script
is known to work before a device is lent. Ratios within one run are what to quote.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_speed import make_agent, random_batch  # noqa: E402

from training.agents.fused_step import FusedUpdate  # noqa: E402
from training.multi_seed import StackedSeeds  # noqa: E402

DEFAULT_MODEL = ROOT / "server" / "default_model" / "cube-single" / "1" / "policy.onnx"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step_fn, steps: int, device: torch.device, warmup: int = 3) -> float:
    for i in range(warmup):
        step_fn(i + 1)
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step_fn(warmup + i + 1)
    synchronize(device)
    return steps / (time.perf_counter() - start)


def agent_on(method: str, width: int, device: torch.device):
    agent = make_agent(method, 28, 5, width)
    agent.to_device(device)
    return agent


def training_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(256, 28, 5, generator).to(device) for _ in range(8)]
    rows = []
    for method in args.methods.split(","):
        row: dict = {"method": method, "width": args.width}
        for label, compile_, mode in (
            ("eager", False, None),
            ("compiled", True, None),
            ("compiled_cuda_graphs", True, "reduce-overhead"),
        ):
            if (mode and device.type != "cuda") or (compile_ and args.eager_only):
                continue
            step = FusedUpdate(agent_on(method, args.width, device), compile=compile_, mode=mode)
            started = time.perf_counter()
            step(batches[0], 1)
            synchronize(device)
            row[f"{label}_first_step_s"] = round(time.perf_counter() - started, 1)
            run = lambda i, s=step: s(batches[i % 8], i + 1)  # noqa: E731
            row[f"{label}_steps_per_s"] = round(rate(run, args.steps, device), 2)
        if args.seeds > 1:
            for label, compile_ in (("seeds_eager", False), ("seeds_compiled", True)):
                if compile_ and args.eager_only:
                    continue
                stacked = StackedSeeds(
                    [agent_on(method, args.width, device) for _ in range(args.seeds)], compile_
                )
                run = lambda i, s=stacked: s([batches[(i + j) % 8] for j in range(args.seeds)], i + 1)  # noqa: E731
                row[f"{label}_steps_per_s"] = round(rate(run, args.steps, device), 2)
            kind = "eager" if args.eager_only else "compiled"
            row[f"time_of_seeds_over_one_{kind}"] = round(
                row[f"{kind}_steps_per_s"] / row[f"seeds_{kind}_steps_per_s"], 2
            )
        rows.append(row)
    return rows


def serving_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            return [{"error": f"no CUDAExecutionProvider in onnxruntime ({available}); install mfql[gpu]"}]
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    rows = []
    for provider in dict.fromkeys([providers[0], "CPUExecutionProvider"]):
        session = onnxruntime.InferenceSession(str(args.model), providers=[provider])
        shapes = {i.name: i.shape for i in session.get_inputs()}
        for batch in (1, 256):
            rng = np.random.default_rng(0)
            noise_shape = [batch, *[1 if isinstance(d, str) else d for d in shapes["noise"][1:]]]
            feeds = {
                "observation": rng.standard_normal((batch, shapes["observation"][1])).astype(np.float32),
                "noise": rng.standard_normal(noise_shape).astype(np.float32),
            }
            for _ in range(10):
                session.run(None, feeds)
            times = []
            for _ in range(args.serving_repeats):
                started = time.perf_counter()
                session.run(None, feeds)
                times.append((time.perf_counter() - started) * 1000)
            rows.append(
                {
                    "provider": provider,
                    "batch": batch,
                    "ms_p50": round(statistics.median(times), 3),
                    "observations_per_s": round(batch / statistics.median(times) * 1000, 1),
                }
            )
    return rows


def synthetic_transitions(path: Path, obs_dim: int = 55, action_dim: int = 5, episodes: int = 20) -> Path:
    """A transitions .npz of puzzle-3x3's dims (random, 200-step episodes, sparse -1/0 rewards)."""
    rng = np.random.default_rng(0)
    rows = episodes * 200
    np.savez(
        path,
        observations=rng.standard_normal((rows, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (rows, action_dim)).astype(np.float32),
        rewards=-(rng.random(rows) > 0.05).astype(np.float32),
        terminals=(np.arange(rows) % 200 == 199).astype(np.float32),
    )
    return path


def train_run_rows(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict]:
    """`mfql-train --device` end to end, with a resume on the device and one on the CPU."""
    import csv

    from training.train import main as train_main

    data = synthetic_transitions(folder / "transitions.npz")
    rows = []
    for agent in args.train_agents.split(","):
        out = folder / agent
        common = [
            "--dataset", str(data), "--agent", agent, "--action-horizon", "5", "--out", str(out),
            "--mlp-hidden", f"{args.width},{args.width},{args.width},{args.width}",
            "--critic-hidden", f"{args.width},{args.width},{args.width},{args.width}",
            "--steps", str(args.train_steps), "--log-every", str(max(1, args.train_steps // 20)),
            "--checkpoint-every", str(max(1, args.train_steps // 2)),
            "--val-fraction", "0.1", "--compile", "off", "--eval-every", str(args.train_steps // 2),
        ]  # fmt: skip
        row: dict = {"agent": agent}
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the report alone
            third = max(1, args.train_steps // 3)
            codes = [
                train_main([*common, "--device", str(device), "--stop-after", str(third)]),
                train_main([*common, "--device", "cpu", "--resume", "--stop-after", str(2 * third)]),
                train_main([*common, "--device", str(device), "--resume"]),
            ]
        row["exit_codes"] = codes
        row["seconds"] = round(time.perf_counter() - started, 1)
        with open(out / "metrics.csv") as handle:
            logged = list(csv.DictReader(handle))
        rates = [float(r["time/steps_per_s"]) for r in logged if r.get("time/steps_per_s")]
        row["loop_steps_per_s_last"] = round(rates[-2], 1) if len(rates) > 1 else None
        row["critic_loss_last"] = float(logged[-1]["critic/loss"])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--methods", default="fql,mfql-mlp,mfql-dit")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--serving-repeats", type=int, default=200)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--train-agents", default="bon,fql", help="agents of the mfql-train end-to-end run ('' skips it)"
    )
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument(
        "--eager-only", action="store_true", help="skip the compiled steps (a quick check of the script)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch; pass --device cpu to run the script here")
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "training": training_rows(args, device),
        "serving": serving_rows(args, device),
    }
    if args.train_agents:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            report["train_runs"] = train_run_rows(args, device, Path(folder))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
