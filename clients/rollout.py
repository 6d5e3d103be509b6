"""``mfql-rollout``: OGBench episodes where every action comes from a running mfql server.

Episode semantics match ``mfql-eval`` (``training/evaluate.py``) step for step: episode i
is reset with ``seed + i``, one action per step until terminated or truncated, success is
``info['success']`` at the last step, so the same bundle gives the same success rate. A
chunked model's chunk is executed open-loop for ``--replan-every`` steps (default: the
model's action horizon H), then a new one is asked for, as ``mfql-eval --replan-every``
does. Each request carries the next seed drawn from ``default_rng(seed + i)``, so a rollout
is reproducible and any request can be replayed against the server.

The control latency is reported three ways: every control step (``control_latency_ms``),
the steps that asked the server (``request_latency_ms``, one per chunk) and the steps
served from the buffered chunk (``step_latency_ms``, no network).

Every rollout is one server session (``reset`` starts each episode); ``--handover-weight``
(with ``--handover-scale``), ``--delay-steps`` and ``--pin-delay`` turn on the server's smooth
hand-over, each request then carrying the chunk's unexecuted rest, and the report gives the
mean absolute action change at chunk boundaries and at every step (docs/control-loop.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from clients.connect import add_connection_arguments, api_key_from, open_client
from clients.errors import MfqlClientError
from clients.latency import latency_summary_ms
from clients.remote_policy import RemotePolicy

SEED_RANGE = 2**31  # request seeds stay in int32, whatever the server's RNG takes


def make_env(env_name: str):
    """The OGBench singletask env, without its dataset (gymnasium/ogbench only needed here)."""
    import ogbench

    return ogbench.make_env_and_datasets(env_name, env_only=True)


def run_episodes(policy: RemotePolicy, env, episodes: int, seed: int) -> dict:
    """Run ``episodes`` episodes (env seeds seed, seed+1, ...); success, return, length, latency."""
    successes, returns, lengths = [], [], []
    latencies: dict[bool, list[float]] = {True: [], False: []}  # by "this step asked the server"
    for episode in range(episodes):
        observation, info = env.reset(seed=seed + episode)
        request_seeds = np.random.default_rng(seed + episode)
        policy.reset()
        done, total, length = False, 0.0, 0
        while not done:
            asks = policy.needs_request
            request_seed = int(request_seeds.integers(SEED_RANGE)) if asks else None
            start = time.perf_counter()
            action = policy(observation, seed=request_seed)
            latencies[asks].append(time.perf_counter() - start)
            observation, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
        successes.append(float(info["success"]))
        returns.append(total)
        lengths.append(length)
    success = np.asarray(successes)
    return {
        "episodes": episodes,
        "success_rate": float(success.mean()),
        "success_rate_stderr": float(success.std(ddof=1) / np.sqrt(episodes)) if episodes > 1 else 0.0,
        "mean_return": float(np.mean(returns)),
        "mean_episode_length": float(np.mean(lengths)),
        "action_horizon": policy.action_horizon,
        "replan_every": policy.replan_every,
        "simulated_delay_steps": policy.simulated_delay_steps,
        "control_latency_ms": latency_summary_ms(latencies[True] + latencies[False]),
        "steps": policy.steps,
        "misses": policy.misses,
        "requests": policy.requests,
        "request_latency_ms": latency_summary_ms(latencies[True]),
        "steps_from_chunk": policy.steps_from_chunk,
        "step_latency_ms": latency_summary_ms(latencies[False]),
        "mean_boundary_change": policy.mean_boundary_change,  # mean |a_t - a_(t-1)| where a chunk takes over
        "mean_step_change": policy.mean_step_change,
        "mean_within_chunk_change": policy.mean_within_chunk_change,  # at the steps that are not hand-overs
        "mean_handover_q_spread": policy.mean_handover_q_spread,  # max - min of the candidates' Q there
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfql-rollout", description="Run OGBench episodes with every action served by an mfql server."
    )
    add_connection_arguments(parser)
    parser.add_argument(
        "--env", default="cube-single-play-singletask-task2-v0", help="OGBench singletask env"
    )
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--num-candidates", type=int, help="K for best-of-K (default: the model's)")
    parser.add_argument(
        "--seed", type=int, default=1_000_000, help="first episode seed (mfql-eval's default)"
    )
    parser.add_argument(
        "--replan-every",
        type=int,
        help="chunked models: actions executed from each chunk before asking again (default: its horizon)",
    )
    parser.add_argument(
        "--handover-weight",
        type=float,
        help="chunked models: the server scores candidates by Q - this x distance to the chunk's rest",
    )
    parser.add_argument(
        "--handover-scale",
        choices=["q", "spread"],
        help="units of --handover-weight: q (the server's default) or spread (x the candidates' Q range)",
    )
    parser.add_argument(
        "--delay-steps", type=int, help="the hand-over's d (default: the server estimates it)"
    )
    parser.add_argument(
        "--pin-delay", action="store_true", help="pin the first d actions to the chunk's rest"
    )
    parser.add_argument(
        "--simulate-delay",
        action="store_true",
        help="play --delay-steps out: the d steps after each request still execute the previous chunk's "
        "rest, and the new chunk takes over at its step d (a robot's timing, in this synchronous loop)",
    )
    parser.add_argument(
        "--control-period-ms",
        type=float,
        help="guard this control period: a late answer repeats the last action and counts a miss",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(
        value is not None and value < 1 for value in (args.episodes, args.num_candidates, args.replan_every)
    ):
        print("mfql-rollout: --episodes, --num-candidates and --replan-every must be >= 1", file=sys.stderr)
        return 2
    period = None if args.control_period_ms is None else args.control_period_ms / 1e3
    try:
        with open_client(
            args.url, args.model, args.protocol, api_key=api_key_from(args), timeout=args.timeout
        ) as client:
            policy = RemotePolicy(
                client,
                num_candidates=args.num_candidates,
                control_period=period,
                replan_every=args.replan_every,
                handover_weight=args.handover_weight,
                handover_scale=args.handover_scale,
                delay_steps=args.delay_steps,
                pin_delay=args.pin_delay,
                simulate_delay=args.simulate_delay,
            )
            env = make_env(args.env)
            try:
                result = run_episodes(policy, env, args.episodes, args.seed)
            finally:
                env.close()
    except MfqlClientError as exc:
        print(f"mfql-rollout: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a setting the model or the client refuses, e.g. --replan-every > H
        print(f"mfql-rollout: {exc}", file=sys.stderr)
        return 2
    answer = policy.last_answer
    result = {
        "env": args.env,
        "url": args.url,
        "protocol": args.protocol,
        "model": policy.metadata.name,
        "version": answer.version if answer else None,
        "num_candidates": answer.num_candidates if answer else args.num_candidates,
        "seed": args.seed,
        **result,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
