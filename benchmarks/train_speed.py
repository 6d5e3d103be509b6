"""Training speed on this machine: MFQL steps/s (DiT and MLP policies, batch 256, K = 5) and FQL's,
in fp32 and bf16 (and compiled, with `--compile`), against this machine's own matmul ceilings.
`bon` is the one-step best-of-N agent (MLP policy, its own K = 32 and H = 5); `--action-horizon`
sets H for every method (e.g. 5 for chunked FQL against bon).

For each method and precision it reports steps/s, the step's FLOPs (`torch.utils.flop_counter`)
and the share of a plain matmul's speed they run at (fp32 and bf16 matmuls of the step's
typical shape are measured in the same run), the cost of one MFQL step relative to one plain
flow-matching BC step (the JVP's overhead), and, with `--components`, the time of each part of
a step and the share that sampling a batch from a 1M-row replay buffer takes; with `--seeds N`,
the time of N seeds in one vectorised step (`mfql-train --seeds`) against one seed's step.
Two anchors can be measured in the same run:
- `--reference DIR --reference-python PY`: the authors' JAX agents at the same sizes, one per
  method (fql: the FQL agent of their repository; mfql-mlp: their MFQL agent with an MLP in
  place of the DiT; mfql-dit: their MFQL agent), timed by the shared `reference_speed.py` (its
  docstring says how to set DIR and PY up, outside this project), with every ratio and what
  the step's FLOPs allow at this machine's matmul speed (`ceiling_over_reference`);
- `--baseline DIR`: this benchmark as another checkout of mfql has it (e.g. a `git worktree`
  of an older commit), run in a subprocess against that checkout's code.

Usage: python benchmarks/train_speed.py [--steps 30] [--width 512] [--methods mfql-dit,mfql-mlp,fql,bon]
       [--precisions fp32,bf16] [--compile] [--components] [--reference DIR --reference-python PY]
       [--seeds 4] [--baseline DIR] [--action-horizon 5]
Reports ratios measured in one run; absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from training.agents import build_agent
from training.agents.common import critic_loss
from training.agents.mfql import Batch, actor_loss, mean_flow_identity_loss, sample_flow_times
from training.config import NetworkConfig, TrainConfig, resolve_agent_config
from training.precision import cpu_bf16_flags, matmul_autocast
from training.replay_buffer import ReplayBuffer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_SCRIPT = ROOT.parent / "shared" / "tools" / "reference_speed.py"


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


def matmul_gflops(rows: int, width: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """GFLOP/s of a dense [rows, width] @ [width, width] matmul in `dtype`, the shape that dominates a step."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, width, generator=generator).to(dtype)
    b = torch.randn(width, width, generator=generator).to(dtype)
    out = torch.empty(rows, width, dtype=dtype)
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


def make_agent(
    method: str,
    obs_dim: int,
    action_dim: int,
    width: int,
    precision: str = "fp32",
    compile_=False,
    action_horizon: int | None = None,
):
    """MFQL with a DiT or MLP policy, FQL, or best-of-N (bon, bon-distill), with cube-single's settings;
    MLPs and critics 4 x `width`; `action_horizon` None keeps each agent's default H."""
    hidden = (width,) * 4
    agent = method if method in ("fql", "bon", "bon-distill") else "mfql"
    config = resolve_agent_config(
        TrainConfig.env_name, "reference", agent=agent, action_horizon=action_horizon
    )
    policy = "mlp" if agent in ("fql", "bon", "bon-distill") else method.removeprefix("mfql-")
    network = NetworkConfig(policy=policy, mlp_hidden=hidden, critic_hidden=hidden)
    return build_agent(agent, obs_dim, action_dim, config, network, 10**6, 0, precision, compile_)


def mfql_components(agent, batches: list[Batch], steps: int) -> dict[str, float]:
    """Milliseconds per step of each part of an MFQL update, timed one part at a time."""
    cfg, generator = agent.config, agent.generator
    b, d = batches[0].actions.shape

    def forward_backward(loss_fn):
        def run(i):
            with matmul_autocast(agent.precision):
                loss = loss_fn(batches[i % len(batches)])
            loss.backward()

        return run

    def target(batch):
        with torch.no_grad():
            critic_loss(
                agent.critic,
                agent.target_critic,
                agent.policy,
                batch,
                agent._noise(cfg.num_candidates, b, d),
                cfg.discount,
            )

    def mfi(batch):
        t = sample_flow_times(b, cfg.time_steps, generator)
        return mean_flow_identity_loss(agent.policy, batch, agent._noise(b, d), t, cfg)[0]

    def critic_only(batch):
        return agent.critic(batch.observations, batch.actions).pow(2).mean()

    def actor(batch):
        return actor_loss(agent.policy, agent.critic, batch, agent._noise(b, d), cfg)[0]

    def with_autocast(fn):
        def run(i):
            with matmul_autocast(agent.precision):
                fn(batches[i % len(batches)])

        return run

    def optimiser(_i):
        torch.nn.utils.clip_grad_norm_(agent.policy.parameters(), cfg.grad_clip)
        torch.nn.utils.clip_grad_norm_(agent.critic.parameters(), cfg.grad_clip)
        agent.actor_optimizer.step()
        agent.critic_optimizer.step()
        with torch.no_grad():
            for t_param, o_param in zip(
                agent.target_critic.parameters(), agent.critic.parameters(), strict=True
            ):
                t_param.lerp_(o_param, cfg.tau)

    parts = {
        "critic target (best of K, no grad)": with_autocast(target),
        "critic loss forward + backward": forward_backward(critic_only),
        "MFI loss: JVP forward + backward": forward_backward(mfi),
        "actor loss forward + backward": forward_backward(actor),
        "grad clip + Adam + EMA": optimiser,
    }
    return {name: round(1000 / time_steps(fn, steps), 2) for name, fn in parts.items()}


def sampling_ms(rows: int, obs_dim: int, action_dim: int, batch_size: int, samples: int = 2000) -> float:
    """Milliseconds to sample one batch from a replay buffer of `rows` transitions (as mfql-train does)."""
    rng = np.random.default_rng(0)
    dataset = SimpleNamespace(
        size=rows,
        observations=rng.standard_normal((rows, obs_dim), dtype=np.float32),
        actions=rng.uniform(-1, 1, (rows, action_dim)).astype(np.float32),
        rewards=np.zeros(rows, np.float32),
        masks=np.ones(rows, np.float32),
        next_observations=rng.standard_normal((rows, obs_dim), dtype=np.float32),
    )
    buffer = ReplayBuffer(dataset, np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32), 0, 0)
    start = time.perf_counter()
    for _ in range(samples):
        buffer.sample(batch_size)
    return (time.perf_counter() - start) / samples * 1000


def measure(method: str, precision: str, args: argparse.Namespace, compile_: bool = False) -> dict:
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    agent = make_agent(
        method, args.obs_dim, args.action_dim, args.width, precision, compile_, args.action_horizon
    )
    batches = [random_batch(args.batch_size, args.obs_dim, agent.chunk_dim, generator) for _ in range(8)]
    agent.update(batches[0], 1)  # with --compile, this first step compiles
    first_step = time.perf_counter() - started
    rate = time_steps(lambda i: agent.update(batches[i % 8], i + 1), args.steps)
    row = {
        "method": method,
        "precision": precision,
        "compiled": compile_,
        "action_horizon": agent.action_horizon,
        "num_candidates": agent.config.num_candidates,
        "steps_per_s": round(rate, 2),
    }
    if compile_:
        row["compile_seconds"] = round(first_step, 1)
        return row
    flops = step_flops(lambda i: agent.update(batches[i % 8], i), args.steps + 10)
    row["gflop_per_step"] = round(flops / 1e9, 2)
    row["achieved_gflop_per_s"] = round(flops * rate / 1e9, 1)
    if method.startswith("mfql"):
        optimizer = torch.optim.Adam(agent.policy.parameters(), lr=1e-4)
        with matmul_autocast(precision):
            bc = time_steps(
                lambda i: flow_matching_bc_step(agent.policy, optimizer, batches[i % 8], generator),
                args.steps,
            )
        row["flow_bc_steps_per_s"] = round(bc, 2)
        row["step_over_flow_bc_step"] = round(bc / rate, 2)
        if args.components:
            row["components_ms"] = mfql_components(agent, batches, args.steps)
    return row


# The reference agent that matches each mfql method at the same sizes (reference_speed.py's flags).
REFERENCE_AGENTS = {
    "fql": ["--agent", "fql"],
    "mfql-mlp": ["--agent", "mfql", "--actor", "mlp"],
    "mfql-dit": ["--agent", "mfql", "--actor", "dit"],
}


def reference_command(args: argparse.Namespace, method: str) -> list[str]:
    """reference_speed.py for `method` with this run's widths and batch (the DiT keeps its 256 x 3)."""
    hidden = ",".join([str(args.width)] * 4)
    return [
        args.reference_python, str(args.reference_script), "--reference", str(args.reference),
        "--batch-size", str(args.batch_size), "--steps", str(2 * args.steps),
        *REFERENCE_AGENTS[method], "--actor-hidden", hidden, "--critic-hidden", hidden,
    ]  # fmt: skip


def measure_seeds(method: str, precision: str, args: argparse.Namespace, compile_: bool) -> dict:
    """`args.seeds` seeds in one vectorised step (mfql-train --seeds) against one seed's step."""
    from training.multi_seed import StackedSeeds

    generator = torch.Generator().manual_seed(0)
    n, horizon = args.seeds, args.action_horizon
    single = make_agent(method, args.obs_dim, args.action_dim, args.width, precision, compile_, horizon)
    batches = [random_batch(args.batch_size, args.obs_dim, single.chunk_dim, generator) for _ in range(8)]
    single.update(batches[0], 1)
    started = time.perf_counter()
    stacked = StackedSeeds(
        [
            make_agent(method, args.obs_dim, args.action_dim, args.width, precision, action_horizon=horizon)
            for _ in range(n)
        ],
        compile_,
    )
    stacked([batches[i] for i in range(n)], 1)
    first_step = time.perf_counter() - started
    # interleaved, so both see the same machine load
    one, together = [], []
    for round_ in range(3):
        one.append(
            time_steps(
                lambda i, o=100 * round_: single.update(batches[i % 8], o + i + 2), args.steps, warmup=1
            )
        )
        together.append(
            time_steps(
                lambda i, o=100 * round_: stacked([batches[(i + j) % 8] for j in range(n)], o + i + 2),
                args.steps,
                warmup=1,
            )
        )
    one_rate, together_rate = statistics.median(one), statistics.median(together)
    return {
        "method": method,
        "precision": precision,
        "compiled": compile_,
        "seeds": n,
        "one_seed_steps_per_s": round(one_rate, 2),
        "seeds_steps_per_s": round(together_rate, 2),
        "time_of_seeds_over_one": round(one_rate / together_rate, 2),
        "first_step_seconds": round(first_step, 1),
    }


def run_reference(args: argparse.Namespace, method: str) -> dict:
    """The JAX reference's steps/s for `method`, from reference_speed.py run by the JAX venv's python.

    With `--threads 1` XLA is held to one thread too, so both sides use the same single core.
    """
    env = dict(os.environ)
    if args.threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    result = subprocess.run(
        reference_command(args, method), capture_output=True, text=True, timeout=3600, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"reference timing of {method} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_baseline(args: argparse.Namespace, methods: list[str]) -> dict[str, float]:
    """steps/s per method of another mfql checkout's own benchmark (its code, fp32 as it was)."""
    checkout = args.baseline.resolve()
    command = [
        sys.executable, str(checkout / "benchmarks" / "train_speed.py"), "--steps", str(args.steps),
        "--width", str(args.width), "--threads", str(args.threads), "--methods", ",".join(methods),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=checkout, env=env, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"baseline benchmark failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout[: result.stdout.index("\n|")])
    return {row["method"]: row["steps_per_s"] for row in report["results"]}


def print_table(report: dict) -> None:
    print(
        "\n| method | precision | steps/s | GFLOP/step | GFLOP/s | of matmul ceiling | steps/s ceiling "
        "| step / BC step |\n|---|---|---|---|---|---|---|---|"
    )
    for row in report["results"]:
        if row["compiled"]:
            print(
                f"| {row['method']} (compiled, {row['compile_seconds']} s) | {row['precision']} | {row['steps_per_s']} | | | | | |"
            )
            continue
        bc = f"{row['step_over_flow_bc_step']}x" if "step_over_flow_bc_step" in row else "-"
        print(
            f"| {row['method']} | {row['precision']} | {row['steps_per_s']} | {row['gflop_per_step']} "
            f"| {row['achieved_gflop_per_s']} | {row['matmul_ceiling_fraction']:.0%} | {row['steps_per_s_ceiling']} | {bc} |"
        )
    if "reference" in report:
        print("\n| method | mfql best steps/s | JAX reference steps/s | ratio | FLOP ceiling / reference |")
        print("|---|---|---|---|---|")
        for method, reference in report["reference"].items():
            best = max(r["steps_per_s"] for r in report["results"] if r["method"] == method)
            print(
                f"| {method} | {best} | {reference['reference_steps_per_s']} "
                f"| {report['reference_ratio'][method]}x | {report['ceiling_over_reference'][method]}x |"
            )
    if "seeds" in report:
        print(
            "\n| method | precision | step | seeds | one seed steps/s | all seeds steps/s | time of all / one |"
        )
        print("|---|---|---|---|---|---|---|")
        for row in report["seeds"]:
            step = "compiled" if row["compiled"] else "eager"
            print(
                f"| {row['method']} | {row['precision']} | {step} | {row['seeds']} | {row['one_seed_steps_per_s']} "
                f"| {row['seeds_steps_per_s']} | {row['time_of_seeds_over_one']}x |"
            )
    for key in ("baseline_ratio", "components_ms", "sampling"):
        if key in report:
            print(f"\n{key}: {json.dumps(report[key])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--obs-dim", type=int, default=28, help="cube-single observation size")
    parser.add_argument("--action-dim", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--width", type=int, default=512, help="MLP policy and critic width (4 layers)")
    parser.add_argument(
        "--methods",
        default="mfql-dit,mfql-mlp,fql",
        help="comma-separated: mfql-dit, mfql-mlp, fql, bon, bon-distill",
    )
    parser.add_argument(
        "--action-horizon", type=int, help="H of every method (default: each agent's own, bon 5, others 1)"
    )
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--compile", action="store_true", help="also time compiled steps (and the compile)")
    parser.add_argument("--components", action="store_true", help="time each part of an MFQL step")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="also time this many seeds in one vectorised step (mfql-train --seeds)",
    )
    parser.add_argument("--reference", type=Path, help="checkout of the reference (JAX) code")
    parser.add_argument("--reference-python", default="python", help="python of the JAX venv")
    parser.add_argument("--reference-script", type=Path, default=DEFAULT_REFERENCE_SCRIPT)
    parser.add_argument("--baseline", type=Path, help="another mfql checkout to time with its own benchmark")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as mfql-train does
    methods = args.methods.split(",")
    precisions = args.precisions.split(",")
    rows = [measure(method, precision, args) for method in methods for precision in precisions]
    if args.compile:
        rows += [
            measure(method, precision, args, compile_=True) for method in methods for precision in precisions
        ]
    seed_rows = []
    if args.seeds > 1:
        seed_rows = [
            measure_seeds(method, precision, args, compile_)
            for method in methods
            for precision in precisions
            for compile_ in ([False, True] if args.compile else [False])
        ]
    # The K x B best-of-K target ([5 * 256, width] @ [width, width]) is the step's largest matmul.
    ceilings = {
        p: matmul_gflops(5 * args.batch_size, args.width, {"fp32": torch.float32, "bf16": torch.bfloat16}[p])
        for p in precisions
    }
    for row in rows:
        if not row["compiled"]:
            ceiling = ceilings[row["precision"]]
            row["matmul_ceiling_fraction"] = round(row["achieved_gflop_per_s"] / ceiling, 2)
            row["steps_per_s_ceiling"] = round(ceiling / row["gflop_per_step"], 1)
    report = {
        "threads": args.threads,
        "batch_size": args.batch_size,
        "width": args.width,
        "cpu_bf16_flags": cpu_bf16_flags(),
        "matmul_gflop_per_s": {p: round(c, 1) for p, c in ceilings.items()},
        "results": rows,
    }
    if seed_rows:
        report["seeds"] = seed_rows
    if args.components:
        step_ms = 1000 / max(r["steps_per_s"] for r in rows if r["method"] == methods[0])
        sample = sampling_ms(1_000_000, args.obs_dim, args.action_dim, args.batch_size)
        report["sampling"] = {
            "ms_per_batch": round(sample, 3),
            "share_of_fastest_step": round(sample / step_ms, 4),
        }
    best = {m: max(r["steps_per_s"] for r in rows if r["method"] == m) for m in methods}
    if args.reference:
        report["reference"] = {m: run_reference(args, m) for m in methods}
        report["reference_ratio"] = {
            m: round(best[m] / report["reference"][m]["reference_steps_per_s"], 2) for m in methods
        }
        # What the step's FLOPs allow at this machine's matmul speed, against the reference.
        report["ceiling_over_reference"] = {
            m: round(
                max(r["steps_per_s_ceiling"] for r in rows if r["method"] == m and not r["compiled"])
                / report["reference"][m]["reference_steps_per_s"],
                2,
            )
            for m in methods
        }
    if args.baseline:
        baseline = run_baseline(args, methods)
        report["baseline"] = baseline
        report["baseline_ratio"] = {m: round(best[m] / baseline[m], 2) for m in methods if m in baseline}
    print(json.dumps(report, indent=2))
    print_table(report)


if __name__ == "__main__":
    main()
