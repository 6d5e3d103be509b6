"""Closed-loop evaluation in the run's env, and the `mfql-eval` CLI.

Success = mean over episodes of `info['success']` at the episode's last step (ALGORITHM.md);
an env that reports no success (e.g. a MuJoCo locomotion env rebuilt from a Minari dataset)
gets `success_rate: null` and is judged by its returns. The env is an OGBench singletask
name, `minari:<id>` (the dataset's stored env) or a gymnasium id (training/envs.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoint import CheckpointError
from training.config import ActingOverrides
from training.inference import ServingPolicy, load_serving_policy, sample_actions
from training.puzzle_progress import PuzzleProgress
from training.rollout_recording import RolloutRecorder


def evaluate_policy(
    module: ServingPolicy,
    env_name: str,
    episodes: int,
    num_candidates: int,
    seed: int,
    progress: bool = True,
    replan_every: int | None = None,
    observation_keys: tuple[str, ...] | None = None,
    record_dir: Path | None = None,
) -> dict:
    """Run `episodes` episodes (env seeds seed, seed+1, ...); return success/return/length/latency
    (and on OGBench puzzle envs `puzzle_progress`: presses per episode and presses left).

    A chunked policy (action horizon H > 1) executes the first `replan_every` actions of each
    chunk open-loop (default H, the whole chunk), then is asked again; `policy_latency_ms`
    times the requests, and `requests` counts them. `record_dir`: every request written there
    (training/rollout_recording.py; `mfql-eval --record-dir`).
    """
    from training.envs import make_eval_env

    horizon = module.action_horizon
    replan = replan_every or horizon
    if not 1 <= replan <= horizon:
        raise ValueError(f"replan_every must be between 1 and the action horizon {horizon}; got {replan}")
    recorder = RolloutRecorder(record_dir, num_candidates, horizon) if record_dir is not None else None
    env = make_eval_env(env_name, observation_keys)
    progress_log = PuzzleProgress.for_env(env_name, env)  # None unless an OGBench puzzle env
    generator = torch.Generator().manual_seed(seed)
    successes, returns, lengths, latencies = [], [], [], []
    for episode in tqdm(range(episodes), desc="eval", leave=False, disable=not progress):
        observation, info = env.reset(seed=seed + episode)
        if recorder is not None:
            recorder.start(episode, seed + episode)
        if progress_log is not None:
            progress_log.start(info)
        done, total, length = False, 0.0, 0
        pending: list[np.ndarray] = []
        while not done:
            if not pending:
                start = time.perf_counter()
                action, q_value = sample_actions(
                    module, torch.as_tensor(observation[None], dtype=torch.float32), num_candidates, generator
                )
                latencies.append(time.perf_counter() - start)
                if recorder is not None:
                    recorder.request(length, observation, action[0].numpy(), q_value[0].item())
                pending = list(action[0].numpy().reshape(horizon, -1)[:replan])
            observation, reward, terminated, truncated, info = env.step(pending.pop(0))
            total += float(reward)
            length += 1
            done = terminated or truncated
            if recorder is not None:
                recorder.executed(reward, done, info.get("success"))
            if progress_log is not None:
                progress_log.step(info)
        if progress_log is not None:
            progress_log.finish()
        if recorder is not None:
            recorder.finish()
        if "success" in info:
            successes.append(float(info["success"]))
        returns.append(total)
        lengths.append(length)
    env.close()
    success = np.asarray(successes) if len(successes) == episodes else None
    latency_ms = np.asarray(latencies) * 1e3
    # a ServingPolicy's acting settings, recorded where not the paper's (other policies have none)
    acting = getattr(module, "acting", None)
    return {
        "env": env_name,
        "episodes": episodes,
        "num_candidates": num_candidates,
        "success_rate": None if success is None else float(success.mean()),
        "success_rate_stderr": _stderr(success),
        "mean_return": float(np.mean(returns)),
        "mean_episode_length": float(np.mean(lengths)),
        "action_horizon": horizon,
        **(acting.report if acting is not None else {}),
        "replan_every": replan,
        # puzzle envs: presses made and fewest presses left per episode (training/puzzle_progress.py)
        **({"puzzle_progress": progress_log.summary()} if progress_log is not None else {}),
        "requests": len(latencies),
        "policy_latency_ms": {
            "mean": float(latency_ms.mean()),
            "p50": float(np.percentile(latency_ms, 50)),
            "p99": float(np.percentile(latency_ms, 99)),
        },
    }


def _stderr(values: np.ndarray | None) -> float | None:
    if values is None:
        return None
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfql-eval", description="Evaluate an MFQL checkpoint in its OGBench env."
    )
    parser.add_argument("checkpoint", help="step directory, or run directory (newest step)")
    parser.add_argument(
        "--env",
        "--eval-env",
        dest="env",
        help="env to roll out in: an OGBench singletask name, minari:<id> or a gymnasium id "
        "(default: the one the run evaluated in)",
    )
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument(
        "--num-candidates", type=int, help="K for best-of-K (default: the K the run acts with)"
    )
    parser.add_argument("--seed", type=int, default=1_000_000, help="first episode seed")
    parser.add_argument(
        "--replan-every",
        type=int,
        help="chunked policies: actions executed from each chunk before asking again (default: as trained)",
    )
    parser.add_argument(
        "--renoise-time",
        type=float,
        help="MeanFlow policies: re-noise each one-step candidate to this time in (0, 1) and rank the "
        "network's output there; 0: one step (default: the run's own, usually off)",
    )
    parser.add_argument(
        "--critic-aggregate",
        choices=["mean", "min"],
        help="rank the K candidates by the critic ensemble's mean Q or its minimum "
        "(default: the run's own, usually mean)",
    )
    parser.add_argument(
        "--noise-scale",
        type=float,
        help="scale each candidate's noise by this factor >= 0 before the policy (a lower sampling "
        "temperature below 1; default: the run's own, usually 1)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest for one observation)"
    )
    parser.add_argument(
        "--record-dir",
        type=Path,
        help="write every request (observation, chosen action, Q, what it gave) to DIR/episode_NNNNNN.jsonl, "
        "in the server's recording layout; DIR must hold no recorded episodes yet",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # see mfql-train: denormal weights slow CPU matmuls
    try:
        module, checkpoint = load_serving_policy(
            args.checkpoint, ActingOverrides(args.renoise_time, args.critic_aggregate, args.noise_scale)
        )
    except (CheckpointError, ValueError) as exc:
        print(f"mfql-eval: {exc}", file=sys.stderr)
        return 2
    k = args.num_candidates or checkpoint.config.acting_num_candidates
    if k < 1 or args.episodes < 1:
        print("mfql-eval: --num-candidates and --episodes must be >= 1", file=sys.stderr)
        return 2
    replan = args.replan_every or checkpoint.config.replan_every
    env = args.env or checkpoint.config.evaluation_env
    if env is None:
        print(
            f"mfql-eval: {checkpoint.path} was trained offline only on {checkpoint.config.data.source}, which names "
            "no env to roll out in; pass --eval-env with a gymnasium id (or minari:<id>, or an OGBench "
            "singletask name) whose observations and actions match the data",
            file=sys.stderr,
        )
        return 2
    keys = checkpoint.config.data.observation_keys
    try:
        result = evaluate_policy(
            module, env, args.episodes, k, args.seed, replan_every=replan, observation_keys=keys,
            record_dir=args.record_dir,
        )  # fmt: skip
    except ValueError as exc:
        print(f"mfql-eval: {exc}", file=sys.stderr)
        return 2
    result.update({"checkpoint": str(checkpoint.path), "step": checkpoint.step})
    if args.record_dir is not None:
        result["record_dir"] = str(args.record_dir)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
