"""Inference latency of the exported policy: eager PyTorch, TorchScript, ONNX Runtime (1 and 2 threads),
against a 10-step Euler flow policy of the same size (what two-stage flow methods run as their
behaviour policy: the same network used 10 times as a velocity field).

Usage: python benchmarks/inference.py [--checkpoint RUN_OR_STEP_DIR] [--budget 1.0] [--max-repeats 100]
Without a checkpoint it times a randomly initialised reference-size DiT (width 256, 3 blocks,
critics 2 x 4 x 512) on cube-single dimensions (obs 28, action 5); latency does not depend on
the weights. Prints markdown tables; absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import Tensor, nn

from exporters.onnx_export import DEFAULT_OPSET, example_inputs, export_onnx
from exporters.runtimes import OnnxRuntimePolicy, TorchScriptPolicy
from exporters.torchscript_export import export_torchscript
from training.config import NetworkConfig
from training.inference import ServingPolicy, load_serving_policy
from training.networks import CriticEnsemble, DiTPolicy, ObservationNormalizer

BATCH_SIZES = (1, 32, 256)
CANDIDATE_COUNTS = (1, 5)
FLOW_STEPS = 10
Call = Callable[[np.ndarray, np.ndarray], object]


class EulerFlowPolicy(nn.Module):
    """The policy network as a velocity field, integrated from noise (t = 1) to an action (t = 0)
    with `steps` Euler steps; `t` is accepted and ignored so it plugs into ServingPolicy."""

    def __init__(self, velocity: nn.Module, steps: int) -> None:
        super().__init__()
        self.velocity = velocity
        self.steps = steps

    def forward(self, observations: Tensor, z: Tensor, t: Tensor) -> Tensor:
        dt = 1.0 / self.steps
        for i in range(self.steps):
            z = z - dt * self.velocity(observations, z, z.new_full((1, 1), 1.0 - i * dt))
        return z


def random_reference_policy(obs_dim: int = 28, action_dim: int = 5) -> ServingPolicy:
    torch.manual_seed(0)
    network = NetworkConfig(policy="dit")
    policy = DiTPolicy(obs_dim, action_dim, network)
    with torch.no_grad():
        # A trained policy's adaLN and head weights are non-zero; the zero initial ones would
        # let the graph simplifier fold away work a real model does (159 instead of 173 nodes).
        for parameter in policy.parameters():
            if parameter.dim() == 2 and not parameter.any():
                parameter.normal_(0.0, 0.01)
    normalizer = ObservationNormalizer(torch.zeros(obs_dim), torch.ones(obs_dim))
    module = ServingPolicy(normalizer, policy, CriticEnsemble(obs_dim, action_dim, network), action_dim)
    return module.eval().requires_grad_(False)


def eager_call(module: nn.Module) -> Call:
    def call(observation: np.ndarray, noise: np.ndarray):
        with torch.inference_mode():
            return module(torch.from_numpy(observation), torch.from_numpy(noise))

    return call


def latency_ms(call: Call, observation: np.ndarray, noise: np.ndarray, budget: float, max_repeats: int):
    """(median, p99) per-call latency in ms after 2 warm-up calls; stops at `budget` seconds."""
    for _ in range(2):
        call(observation, noise)
    samples, deadline = [], time.perf_counter() + budget
    while len(samples) < max_repeats and (len(samples) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        call(observation, noise)
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples)), float(np.percentile(samples, 99))


def build_runtimes(module: ServingPolicy, workdir: Path) -> dict[str, Call]:
    obs_dim, action_dim = module.normalizer.mean.shape[0], module.action_dim
    example = example_inputs(obs_dim, action_dim)
    flow = ServingPolicy(
        module.normalizer, EulerFlowPolicy(module.policy, FLOW_STEPS), module.critic, action_dim
    )
    one_step_graph = export_onnx(module, example, workdir / "one_step.onnx", DEFAULT_OPSET)
    flow_graph = export_onnx(flow.eval(), example, workdir / "flow.onnx", DEFAULT_OPSET)
    export_torchscript(module, example, workdir / "one_step.ts")
    print(f"one-step graph: {one_step_graph.node_count} nodes, {one_step_graph.file_bytes / 1e6:.1f} MB")
    print(
        f"{FLOW_STEPS}-step flow graph: {flow_graph.node_count} nodes, {flow_graph.file_bytes / 1e6:.1f} MB\n"
    )
    return {
        "one-step eager": eager_call(module),
        "one-step TorchScript": TorchScriptPolicy(workdir / "one_step.ts"),
        "one-step ORT 1T": OnnxRuntimePolicy(workdir / "one_step.onnx", intra_op_threads=1),
        "one-step ORT 2T": OnnxRuntimePolicy(workdir / "one_step.onnx", intra_op_threads=2),
        f"{FLOW_STEPS}-step eager": eager_call(flow),
        f"{FLOW_STEPS}-step ORT 1T": OnnxRuntimePolicy(workdir / "flow.onnx", intra_op_threads=1),
        f"{FLOW_STEPS}-step ORT 2T": OnnxRuntimePolicy(workdir / "flow.onnx", intra_op_threads=2),
    }


def measure_all(runtimes: dict[str, Call], obs_dim: int, action_dim: int, budget: float, max_repeats: int):
    rng = np.random.default_rng(0)
    results = {}
    for b in BATCH_SIZES:
        for k in CANDIDATE_COUNTS:
            observation = rng.standard_normal((b, obs_dim)).astype(np.float32)
            noise = rng.standard_normal((b, k, action_dim)).astype(np.float32)
            for name, call in runtimes.items():
                results[name, b, k] = latency_ms(call, observation, noise, budget, max_repeats)
    return results


def print_tables(results: dict, names: list[str]) -> None:
    print("Per-call latency, median / p99 in ms\n")
    print("| B | K | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for b in BATCH_SIZES:
        for k in CANDIDATE_COUNTS:
            cells = [f"{results[n, b, k][0]:.2f} / {results[n, b, k][1]:.2f}" for n in names]
            print(f"| {b} | {k} | " + " | ".join(cells) + " |")

    def ratio(numerator: str, denominator: str, b: int, k: int, k_denominator: int | None = None) -> str:
        return f"{results[numerator, b, k][0] / results[denominator, b, k_denominator or k][0]:.1f}x"

    flow = f"{FLOW_STEPS}-step"
    print(
        f"\nRatios of medians\n\n| B | K | {flow} / one-step (eager) | {flow} / one-step (ORT 1T) "
        "| eager / ORT 1T (one-step) | eager / TorchScript | ORT 1T / ORT 2T |"
    )
    print("|---|---|---|---|---|---|---|")
    for b in BATCH_SIZES:
        for k in CANDIDATE_COUNTS:
            cells = [
                ratio(f"{flow} eager", "one-step eager", b, k),
                ratio(f"{flow} ORT 1T", "one-step ORT 1T", b, k),
                ratio("one-step eager", "one-step ORT 1T", b, k),
                ratio("one-step eager", "one-step TorchScript", b, k),
                ratio("one-step ORT 1T", "one-step ORT 2T", b, k),
            ]
            print(f"| {b} | {k} | " + " | ".join(cells) + " |")
    k_high, k_low = CANDIDATE_COUNTS[-1], CANDIDATE_COUNTS[0]
    print(f"\nK = {k_high} vs K = {k_low} (one-step), ratio of medians\n")
    print("| B | eager | TorchScript | ORT 1T | ORT 2T |")
    print("|---|---|---|---|---|")
    for b in BATCH_SIZES:
        runtimes = ["one-step eager", "one-step TorchScript", "one-step ORT 1T", "one-step ORT 2T"]
        print(f"| {b} | " + " | ".join(ratio(n, n, b, k_high, k_low) for n in runtimes) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="time this checkpoint's policy instead")
    parser.add_argument(
        "--budget", type=float, default=1.0, help="seconds of timed calls per cell (>= 5 calls)"
    )
    parser.add_argument("--max-repeats", type=int, default=100, help="timed calls per cell at most")
    # One thread by default: on a small shared machine, two OpenMP threads stall whenever the
    # other core is busy (we saw single calls jump from 20 ms to 300 ms), which times the
    # neighbours rather than the model. ORT is timed with 1 and 2 threads either way.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for eager/TorchScript")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = load_serving_policy(args.checkpoint)[0] if args.checkpoint else random_reference_policy()
    obs_dim, action_dim = module.normalizer.mean.shape[0], module.action_dim
    print(
        f"torch {torch.__version__} ({args.threads} threads), onnxruntime {onnxruntime.__version__}; "
        f"obs_dim {obs_dim}, action_dim {action_dim}\n"
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        runtimes = build_runtimes(module, Path(workdir))
        results = measure_all(runtimes, obs_dim, action_dim, args.budget, args.max_repeats)
    print_tables(results, list(runtimes))
    print(f"\n(total {time.perf_counter() - start:.0f} s including export)")


if __name__ == "__main__":
    main()
