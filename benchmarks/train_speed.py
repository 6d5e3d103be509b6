"""Training speed on this machine: MFQL steps/s (DiT and MLP policies, batch 256, K = 5),
and the cost of one MFQL step relative to one plain flow-matching BC step (the JVP's overhead).

Usage: python benchmarks/train_speed.py [--steps 30] [--obs-dim 28] [--action-dim 5]
Reports ratios measured in one run; absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from training.agents.mfql import Batch, MFQLAgent
from training.config import AgentConfig, NetworkConfig


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


def measure(policy_type: str, steps: int, obs_dim: int, action_dim: int, batch_size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(batch_size, obs_dim, action_dim, generator) for _ in range(8)]
    agent = MFQLAgent(
        obs_dim,
        action_dim,
        AgentConfig(num_candidates=5),
        NetworkConfig(policy=policy_type),
        offline_steps=10**6,
    )
    mfql = time_steps(lambda i: agent.update(batches[i % 8], i), steps)
    optimizer = torch.optim.Adam(agent.policy.parameters(), lr=1e-4)
    bc = time_steps(
        lambda i: flow_matching_bc_step(agent.policy, optimizer, batches[i % 8], generator), steps
    )
    return {
        "policy": policy_type,
        "mfql_steps_per_s": round(mfql, 2),
        "flow_bc_steps_per_s": round(bc, 2),
        "mfql_step_over_flow_bc_step": round(bc / mfql, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--obs-dim", type=int, default=28, help="cube-single observation size")
    parser.add_argument("--action-dim", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as mfql-train does
    rows = [
        measure(kind, args.steps, args.obs_dim, args.action_dim, args.batch_size) for kind in ("dit", "mlp")
    ]
    print(json.dumps({"threads": args.threads, "batch_size": args.batch_size, "results": rows}, indent=2))
    print("\n| policy | MFQL steps/s | flow-matching BC steps/s | MFQL step / BC step |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['policy']} | {row['mfql_steps_per_s']} | {row['flow_bc_steps_per_s']} | "
            f"{row['mfql_step_over_flow_bc_step']}x |"
        )


if __name__ == "__main__":
    main()
