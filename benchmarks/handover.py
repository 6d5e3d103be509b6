"""Closed-loop effect of the server's smooth hand-over (docs/control-loop.md) on a chunked model.

Starts `mfql-serve` on a repository, then runs the same OGBench episodes (same seeds) through
`RemotePolicy` once per setting: the chunk is replanned every `--replan-every` s < H steps and
the inference delay of `--delay-steps` d steps is played out (`simulate_delay`: the d steps
after a request still execute the previous chunk's rest, the new chunk takes over at its step
d), with the hand-over off (lambda 0, today's best-of-K by Q) and at each `--weights` lambda,
then with `--pin-delay`. It prints, per setting, the mean absolute action change where a new
chunk takes over, at the other steps (within chunks: the floor a hand-over can reach) and at
every step, and the success rate; `--out DIR` also writes handover.json and handover.png.

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
    parser.add_argument(
        "--handover-scale",
        choices=["q", "spread"],
        default="q",
        help="units of the lambdas: q, or spread (x the candidates' Q range: docs/control-loop.md)",
    )
    parser.add_argument("--num-candidates", type=int, help="K (default: the model's)")
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--out", type=Path, help="folder for handover.json and handover.png")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from clients import PolicyClient
    from clients.remote_policy import RemotePolicy
    from clients.rollout import make_env, run_episodes

    settings = [("off (lambda 0)", None, False)]
    units = " x Q spread" if args.handover_scale == "spread" else ""
    settings += [(f"lambda {w}{units}", float(w), False) for w in args.weights.split(",") if w.strip()]
    last = settings[-1][1]
    settings += [(f"lambda {last:g}{units} + pin", last, True)] if len(settings) > 1 else []
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
                    handover_scale=args.handover_scale if weight else None,
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
                "success_rate", "success_rate_stderr", "mean_boundary_change", "mean_within_chunk_change",
                "mean_step_change", "mean_return", "mean_handover_q_spread",
            )}})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    print(markdown_table(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        run = {k: v for k, v in vars(args).items() if k not in ("repository", "out")}
        (args.out / "handover.json").write_text(json.dumps({"run": run, "rows": rows}, indent=2))
        title = (
            f"{args.model} on {args.env}: replanned every s = {args.replan_every} steps, delay d = "
            f"{args.delay_steps}, K = {args.num_candidates or 'as the model'}, {args.episodes} episodes"
        )
        plot(rows, title, args.out / "handover.png")
    return 0


def markdown_table(rows: list[dict]) -> str:
    """Per setting: the change at hand-overs, against off, its excess over the within-chunk change."""
    base = rows[0]["mean_boundary_change"]
    lines = [
        "| setting | change at hand-overs | vs off | within chunks | excess at hand-overs | Q spread there | success |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        boundary, within = row["mean_boundary_change"], row["mean_within_chunk_change"]
        spread = "-" if row.get("mean_handover_q_spread") is None else f"{row['mean_handover_q_spread']:.3g}"
        lines.append(
            f"| {row['setting']} | {boundary:.4f} | {boundary / base:.2f}x | {within:.4f} | "
            f"{boundary - within:+.4f} | {spread} | {row['success_rate']:.2f} +/- {row['success_rate_stderr']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], title: str, path: Path) -> None:
    """Grouped bars of the change at hand-overs and within chunks, and the success rate, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [row["setting"] for row in rows]
    x = np.arange(len(rows))
    fig, (changes, success) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    changes.bar(x - 0.2, [r["mean_boundary_change"] for r in rows], 0.4, label="where a new chunk takes over")
    changes.bar(x + 0.2, [r["mean_within_chunk_change"] for r in rows], 0.4, label="within chunks")
    changes.set_ylabel("mean |a_t - a_(t-1)|")
    success.bar(x, [r["success_rate"] for r in rows], 0.6, yerr=[r["success_rate_stderr"] for r in rows])
    success.set_ylabel("success rate")
    success.set_ylim(0, 1.05)
    for axis in (changes, success):
        axis.set_xticks(x, names, rotation=30, ha="right")
    changes.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
