"""Closed-loop effect of the server's smooth hand-over (docs/control-loop.md) on a chunked model.

Starts `mfql-serve` on a repository, then runs the same OGBench episodes (same seeds) through
`RemotePolicy` once per setting: the chunk is replanned every `--replan-every` s < H steps and
the inference delay of `--delay-steps` d steps is played out (`simulate_delay`: the d steps
after a request still execute the previous chunk's rest, the new chunk takes over at its step
d), with the hand-over off (lambda 0, today's best-of-K by Q) and at each `--weights` lambda,
then with `--pin-delay`. It prints, per setting, the mean absolute action change where a new
chunk takes over and at every step, and the success rate.

    python benchmarks/handover.py --repository models --model puzzle-fql-chunk-5 --env puzzle-3x3-play-singletask-task2-v0 --episodes 10 --replan-every 3 --delay-steps 1 --weights 1,10,100
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_server(repository: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MFQL_INTRA_OP_THREADS": "1", "MFQL_INTER_OP_THREADS": "1"}
    command = [sys.executable, "-m", "server.cli", "--model-repository", str(repository), "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"mfql-serve did not become ready on port {port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--env", required=True, help="OGBench singletask env of the model")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1_000_000)
    parser.add_argument("--replan-every", type=int, default=3)
    parser.add_argument("--delay-steps", type=int, default=1)
    parser.add_argument("--weights", default="1,10,100", help="hand-over lambdas to compare with 0")
    parser.add_argument("--num-candidates", type=int, help="K (default: the model's)")
    parser.add_argument("--port", type=int, default=8191)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from clients import PolicyClient
    from clients.remote_policy import RemotePolicy
    from clients.rollout import make_env, run_episodes

    settings = [("off (lambda 0)", None, False)]
    settings += [(f"lambda {w}", float(w), False) for w in args.weights.split(",") if w.strip()]
    settings += [(f"lambda {settings[-1][1]:g} + pin", settings[-1][1], True)] if len(settings) > 1 else []
    server = start_server(args.repository, args.port)
    rows = []
    try:
        for name, weight, pin in settings:
            with PolicyClient(f"http://127.0.0.1:{args.port}", model=args.model) as client:
                policy = RemotePolicy(
                    client,
                    num_candidates=args.num_candidates,
                    replan_every=args.replan_every,
                    handover_weight=weight,
                    delay_steps=args.delay_steps,
                    pin_delay=pin,
                    simulate_delay=True,
                )
                env = make_env(args.env)
                try:
                    result = run_episodes(policy, env, args.episodes, args.seed)
                finally:
                    env.close()
            rows.append({"setting": name, **{k: result[k] for k in (
                "success_rate", "success_rate_stderr", "mean_boundary_change", "mean_step_change", "mean_return"
            )}})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    base = rows[0]["mean_boundary_change"]
    print("\n| setting | boundary change | vs off | step change | success |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['setting']} | {row['mean_boundary_change']:.4f} | {row['mean_boundary_change'] / base:.2f}x | "
            f"{row['mean_step_change']:.4f} | {row['success_rate']:.2f} +/- {row['success_rate_stderr']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
