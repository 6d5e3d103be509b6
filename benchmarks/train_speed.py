"""Training speed on this machine: MFQL steps/s (DiT and MLP policies, batch 256, K = 5) and FQL's,
the cost of one MFQL step relative to one plain flow-matching BC step (the JVP's overhead),
and how close a step runs to the machine's own matrix-multiply ceiling: the step's FLOPs
(counted by `torch.utils.flop_counter`) times steps/s, against the GFLOP/s of a plain fp32
matmul of the step's typical shape measured in the same run. `steps/s ceiling` is what a
step would reach if every FLOP ran at that matmul speed.

Usage: python benchmarks/train_speed.py [--steps 30] [--width 512] [--methods mfql-dit,mfql-mlp,fql]
Reports ratios measured in one run; absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.agents import build_agent
from training.agents.mfql import Batch
from training.config import NetworkConfig, TrainConfig, resolve_agent_config


def random_batch(batch_size: int, obs_dim: int, action_dim: int, generator: torch.Generator) -> Batch:
    return Batch(
        observations=torch.randn(batch_size, obs_dim, generator=generator),
        actions=torch.rand(batch_size, action_dim, generator=generator) * 2 - 1,
        rewards=-torch.randint(0, 2, (batch_size,), generator=generator).float(),
        masks=torch.ones(batch_size),
        next_observations=torch.randn(batch_size, obs_dim, generator=generator),
    )


def time_steps(step_fn, steps: int, warmup: int = 3) -> float:
    """Steps per second of `step_fn(step)` after a short warm-up."""
    for i in range(warmup):
        step_fn(i + 1)
    start = time.perf_counter()
    for i in range(steps):
        step_fn(warmup + i + 1)
    return steps / (time.perf_counter() - start)


def step_flops(step_fn, step: int) -> int:
    """FLOPs of one call `step_fn(step)`, counted per aten operation (forward, JVP and backward)."""
    with FlopCounterMode(display=False) as counter:
        step_fn(step)
    return counter.get_total_flops()


def matmul_gflops(rows: int, width: int, seconds: float = 2.0) -> float:
    """GFLOP/s of a dense fp32 [rows, width] @ [width, width] matmul, the shape that dominates a step."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, width, generator=generator)
    b = torch.randn(width, width, generator=generator)
    out = torch.empty(rows, width)
    for _ in range(10):
        torch.mm(a, b, out=out)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=out)
        calls += 1
    return 2 * rows * width * width * calls / (time.perf_counter() - start) / 1e9


def flow_matching_bc_step(
    policy: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, generator: torch.Generator
) -> None:
    """One plain flow-matching BC step on the same network: ||g(s, z_t, t) - v||^2."""
    noise = torch.randn(batch.actions.shape, generator=generator)
    t = torch.rand(batch.actions.shape[0], 1, generator=generator)
    z_t = (1 - t) * batch.actions + t * noise
    loss = (policy(batch.observations, z_t, t) - (noise - batch.actions)).pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    optimizer.step()


def make_agent(method: str, obs_dim: int, action_dim: int, width: int):
    """MFQL with a DiT or MLP policy, or FQL, with cube-single's settings; MLPs and critics 4 x `width`."""
    hidden = (width,) * 4
    agent = "fql" if method == "fql" else "mfql"
    config = resolve_agent_config(TrainConfig.env_name, "reference", agent=agent)
    policy = "mlp" if agent == "fql" else method.removeprefix("mfql-")
    network = NetworkConfig(policy=policy, mlp_hidden=hidden, critic_hidden=hidden)
    return build_agent(agent, obs_dim, action_dim, config, network, offline_steps=10**6, seed=0)


def measure(method: str, steps: int, obs_dim: int, action_dim: int, batch_size: int, width: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(batch_size, obs_dim, action_dim, generator) for _ in range(8)]
    agent = make_agent(method, obs_dim, action_dim, width)
    rate = time_steps(lambda i: agent.update(batches[i % 8], i), steps)
    flops = step_flops(lambda i: agent.update(batches[i % 8], i), steps + 10)
    row = {
        "method": method,
        "steps_per_s": round(rate, 2),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_gflop_per_s": round(flops * rate / 1e9, 1),
    }
    if method.startswith("mfql"):
        optimizer = torch.optim.Adam(agent.policy.parameters(), lr=1e-4)
        bc = time_steps(
            lambda i: flow_matching_bc_step(agent.policy, optimizer, batches[i % 8], generator), steps
        )
        row["flow_bc_steps_per_s"] = round(bc, 2)
        row["step_over_flow_bc_step"] = round(bc / rate, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--obs-dim", type=int, default=28, help="cube-single observation size")
    parser.add_argument("--action-dim", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--width", type=int, default=512, help="MLP policy and critic width (4 layers)")
    parser.add_argument("--methods", default="mfql-dit,mfql-mlp,fql", help="comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as mfql-train does
    rows = [
        measure(method, args.steps, args.obs_dim, args.action_dim, args.batch_size, args.width)
        for method in args.methods.split(",")
    ]
    # The K x B best-of-K target ([5 * 256, width] @ [width, width]) is the step's largest matmul.
    ceiling = matmul_gflops(5 * args.batch_size, args.width)
    for row in rows:
        row["matmul_ceiling_fraction"] = round(row["achieved_gflop_per_s"] / ceiling, 2)
        row["steps_per_s_ceiling"] = round(ceiling / row["gflop_per_step"], 1)
    report = {
        "threads": args.threads,
        "batch_size": args.batch_size,
        "width": args.width,
        "matmul_gflop_per_s": round(ceiling, 1),
        "results": rows,
    }
    print(json.dumps(report, indent=2))
    print(
        "\n| method | steps/s | GFLOP/step | GFLOP/s | of matmul ceiling | steps/s ceiling "
        "| BC steps/s | step / BC step |\n|---|---|---|---|---|---|---|---|"
    )
    for row in rows:
        bc = (
            row.get("flow_bc_steps_per_s", "-"),
            f"{row['step_over_flow_bc_step']}x" if "step_over_flow_bc_step" in row else "-",
        )
        print(
            f"| {row['method']} | {row['steps_per_s']} | {row['gflop_per_step']} | {row['achieved_gflop_per_s']} | "
            f"{row['matmul_ceiling_fraction']:.0%} | {row['steps_per_s_ceiling']} | {bc[0]} | {bc[1]} |"
        )


if __name__ == "__main__":
    main()
