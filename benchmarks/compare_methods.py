"""MFQL vs FQL on the same data, seeds and step budget: the paper's central comparison, one command.

For each method and seed it runs `mfql-train`, then `mfql-eval` on the final checkpoint, and
reports success rate (mean and spread over seeds), the mean return per episode, training
steps/s (the trainer's own `time/steps_per_s`, which excludes data loading, evaluations and
checkpoints) and the policy's latency per action. `--eval-every N` adds evaluations during
training and a plot of both methods' learning curves (`comparison.png`: success, and the mean
return below it). `--jobs 2 --threads 1` trains two runs at
once, one core each: on a 2-core machine that is about 1.3x the throughput of one 2-thread run
at a time (MFQL, MLP 4x256: 2 x 11.9 vs 18.5 steps/s, on an earlier CPU; on the AVX2-only
EPYC of 2026-12-03 two compiled puzzle runs at once went at 6.3 (FQL) and 5.2 (MFQL) steps/s,
and one 2-thread run was not measured there), and both methods see the same conditions.

    python benchmarks/compare_methods.py --env cube-single-play-singletask-task2-v0 \
        --dataset-dir data --steps 50000 --seeds 0,1 --policy mlp --out runs/compare

Writes `<out>/comparison.json` and `<out>/comparison.md` and prints the JSON.
Extra `mfql-train` flags go after `--`, e.g. `-- --mlp-hidden 256,256,256,256`; both methods
get them, so MFQL-only options (`--mfi-draws`, `--anchor-weight`, ...), which `mfql-train
--agent fql` refuses, belong in an arm of `benchmarks/ablate.py` instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = ("mfql", "fql")
# Each finished run's row, kept in its run directory: a study stopped part-way (a session that
# ended, a crash) keeps the runs it finished, and `ablate.py --collect` tables them.
FINAL_EVALUATION = "final_evaluation.json"


def console(name: str, module: str) -> list[str]:
    executable = shutil.which(name, path=str(Path(sys.executable).parent))
    return [executable] if executable else [sys.executable, "-m", module]


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def finished_row(run_dir: Path) -> dict | None:
    """The row a finished run keeps in its directory, or None (never run, or stopped before it)."""
    path = run_dir / FINAL_EVALUATION
    return json.loads(path.read_text()) if path.is_file() else None


def has_checkpoint(run_dir: Path) -> bool:
    """A completed step directory to resume from (`mfql-train` writes them whole, then renames)."""
    return any(path.is_dir() for path in (run_dir / "checkpoints").glob("step_*"))


def train_and_evaluate(args: argparse.Namespace, name: str, seed: int, flags: list[str]) -> dict:
    """Train one arm (`name`, its `mfql-train` flags) for one seed, then evaluate its final checkpoint.

    With `--resume`, a finished run (its `final_evaluation.json`) is kept as it is, and a run
    stopped part-way (a session that ended) continues from its newest checkpoint."""
    run_dir = args.out / f"{name}-seed{seed}"
    if args.resume and (row := finished_row(run_dir)) is not None:
        return row
    start = time.perf_counter()
    resume = args.resume and has_checkpoint(run_dir)
    run(train_command(args, run_dir, ["--seed", str(seed)], flags, resume))
    return evaluate_run(args, name, seed, run_dir, time.perf_counter() - start)


def train_and_evaluate_seeds(
    args: argparse.Namespace, name: str, seeds: list[int], flags: list[str]
) -> list[dict]:
    """`train_and_evaluate` for all `seeds` of an arm in one `mfql-train --seeds` process
    (`--seeds-together`): run directories `<out>/<name>-seeds/seed<N>`. One process trains all
    the seeds, so `--resume` keeps them only if all finished, and resumes only if all have a
    checkpoint; otherwise they start again together."""
    parent = args.out / f"{name}-seeds"
    run_dirs = [parent / f"seed{seed}" for seed in seeds]
    if args.resume and all(rows := [finished_row(d) for d in run_dirs]):
        return rows
    start = time.perf_counter()
    resume = args.resume and all(has_checkpoint(d) for d in run_dirs)
    run(train_command(args, parent, ["--seeds", ",".join(map(str, seeds))], flags, resume))
    seconds = time.perf_counter() - start
    return [evaluate_run(args, name, seed, d, seconds) for seed, d in zip(seeds, run_dirs, strict=True)]


def train_command(
    args: argparse.Namespace, out: Path, seed_flags: list[str], flags: list[str], resume: bool = False
) -> list[str]:
    evaluations = ["--eval-every", str(args.eval_every), "--eval-episodes", str(args.curve_episodes)]
    return [
        *console("mfql-train", "training.train"),
        "--env", args.env, "--dataset-dir", str(args.dataset_dir), "--out", str(out),
        "--steps", str(args.steps), *seed_flags,
        *(evaluations if args.eval_every else ["--eval-episodes", "0"]),
        "--checkpoint-every", str(args.checkpoint_every or args.steps),
        "--resume" if resume else "--overwrite", "--threads", str(args.threads), *flags,
    ]  # fmt: skip


def evaluate_run(args: argparse.Namespace, name: str, seed: int, run_dir: Path, seconds: float) -> dict:
    """The final checkpoint's `mfql-eval` over the study's evaluation episodes, and the run's speed."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        logged = list(csv.DictReader(handle))
    rates = [float(row["time/steps_per_s"]) for row in logged]
    report = json.loads(
        run(
            [
                *console("mfql-eval", "training.evaluate"),
                str(run_dir),
                "--episodes",
                str(args.eval_episodes),
                "--seed",
                str(1_000_000 + 1000 * seed),
            ]  # fmt: skip
        )
    )
    row = {
        "method": name,
        "seed": seed,
        "success_rate": report["success_rate"],
        "success_rate_stderr": report["success_rate_stderr"],
        # the mean of each episode's summed reward: the signal where no episode succeeds yet
        # (puzzle's dense reward counts the lights that do not match the goal)
        "mean_return": report["mean_return"],
        "wall_seconds": round(seconds, 1),
        # the last logged step: fewer than --steps when `--time-budget-minutes` stopped the run
        "steps_trained": int(logged[-1]["step"]),
        # Every log interval holds the same number of steps (a budget-stopped run's last one may
        # hold fewer; one short interval of many): their harmonic mean is steps / time.
        # With --seeds-together: steps of every seed at once per second.
        "train_steps_per_second": statistics.harmonic_mean(rates),
        "policy_latency_ms_p50": report["policy_latency_ms"]["p50"],
        "num_candidates": report["num_candidates"],
        "run_dir": str(run_dir),
    }
    (run_dir / FINAL_EVALUATION).write_text(json.dumps(row, indent=2))
    return row


def train_all(args: argparse.Namespace, arms: list[str], seeds: list[int], flags_of) -> list[dict]:
    """Every (arm, seed) run, `--jobs` at a time: one process per run, or per arm with `--seeds-together`."""
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        if args.seeds_together and len(seeds) > 1:
            groups = pool.map(lambda arm: train_and_evaluate_seeds(args, arm, seeds, flags_of(arm)), arms)
            return [row for group in groups for row in group]
        runs = [(arm, seed) for arm in arms for seed in seeds]
        return list(pool.map(lambda r: train_and_evaluate(args, r[0], r[1], flags_of(r[0])), runs))


def arm_colours(count: int) -> tuple:
    """Distinct colours for `count` arms: tab10 up to 10 (tab20 pairs a dark and a light shade
    of one hue, which made a two-arm study one colour), tab20 beyond."""
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab10" if count <= 10 else "tab20").colors


def plot_learning_curves(args: argparse.Namespace, rows: list[dict]) -> Path:
    """comparison.png: success rate (top) and mean return per episode (bottom) during training,
    one line per method and seed. The return shows learning on a dense reward before any
    episode succeeds (evaluations.csv of older runs lacks it: that panel then stays empty)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one colour per method (seeds share it, with their own markers), legend beside the axes:
    # a study of many arms stays readable
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = arm_colours(len(methods))
    markers = "osD^v<>"
    fig, (success_ax, return_ax) = plt.subplots(2, 1, figsize=(9.0, 6.6), sharex=True)
    for row in rows:
        with open(Path(row["run_dir"]) / "evaluations.csv", newline="") as handle:
            points = list(csv.DictReader(handle))
        style = {
            "marker": markers[int(row["seed"]) % len(markers)],
            "color": colours[methods.index(row["method"]) % len(colours)],
            "label": f"{row['method']} seed {row['seed']}",
        }
        steps = [int(p["step"]) for p in points]
        success_ax.errorbar(
            steps,
            [float(p["success_rate"]) for p in points],
            yerr=[float(p["success_rate_stderr"]) for p in points],
            capsize=3,
            **style,
        )
        if points and "mean_return" in points[0]:
            return_ax.plot(steps, [float(p["mean_return"]) for p in points], **style)
    return_ax.set_xlabel("gradient step")
    success_ax.set_ylabel(f"success rate ({args.curve_episodes} episodes)")
    return_ax.set_ylabel("mean return per episode")
    success_ax.set_ylim(-0.05, 1.05)
    success_ax.set_title(args.env, fontsize=9)
    success_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out = args.out / "comparison.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        success = [r["success_rate"] for r in mine]
        summary[method] = {
            "success_rate_mean": statistics.fmean(success),
            "success_rate_stdev": statistics.stdev(success) if len(success) > 1 else 0.0,
            # rows written before mean_return was recorded lack it
            "mean_return_mean": (
                statistics.fmean(r["mean_return"] for r in mine)
                if all("mean_return" in r for r in mine)
                else None
            ),
            "train_steps_per_second": statistics.fmean(r["train_steps_per_second"] for r in mine),
            "policy_latency_ms_p50": statistics.fmean(r["policy_latency_ms_p50"] for r in mine),
        }
    return summary


def mean_return_cell(summary_row: dict) -> str:
    """A summary row's mean return for a table; "-" where some of its runs did not record one."""
    value = summary_row["mean_return_mean"]
    return "-" if value is None else f"{value:.1f}"


def markdown(args: argparse.Namespace, summary: dict) -> str:
    lines = [
        f"{args.env}, {args.steps} steps, seeds {args.seeds}, {args.eval_episodes} eval episodes, policy {args.policy}",
        "",
        "| method | success rate | mean return | training steps/s | latency per action (ms, p50) |",
        "|---|---|---|---|---|",
    ]
    for method, row in summary.items():
        lines.append(
            f"| {method.upper()} | {row['success_rate_mean']:.2f} +/- {row['success_rate_stdev']:.2f} "
            f"| {mean_return_cell(row)} | {row['train_steps_per_second']:.1f} | {row['policy_latency_ms_p50']:.2f} |"
        )
    if args.eval_every:
        lines += ["", "![success rate during training](comparison.png)"]
    return "\n".join(lines) + "\n"


def split_extra(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(this script's arguments, the `mfql-train` flags after `--`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    return argv[: argv.index("--")], argv[argv.index("--") + 1 :]


def add_run_arguments(parser: argparse.ArgumentParser, steps: int, eval_every: int, out: str) -> None:
    """The options `train_and_evaluate` reads: data, budget, seeds, evaluations, parallelism."""
    parser.add_argument("--env", default="cube-single-play-singletask-task2-v0")
    parser.add_argument("--dataset-dir", type=Path, default=Path("data"))
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument(
        "--eval-every", type=int, default=eval_every, help="evaluate during training (curves)"
    )
    parser.add_argument("--curve-episodes", type=int, default=25, help="episodes per training evaluation")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument(
        "--seeds-together",
        action="store_true",
        help="train each arm's seeds in one `mfql-train --seeds` process, as one vectorised step "
        "(pays where steps are launch-bound, e.g. a GPU; on a CPU it is slower: docs/performance.md)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs in --out that finished (their final_evaluation.json) and continue the "
        "ones stopped part-way from their newest checkpoint (see --checkpoint-every); without it "
        "every run starts again",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="checkpoint each run every N steps, so --resume loses at most N (default: only at the end)",
    )
    parser.add_argument("--out", type=Path, default=Path(out))


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_extra(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser, steps=50_000, eval_every=0, out="runs/compare")
    parser.add_argument("--policy", choices=["mlp", "dit"], default="mlp", help="MFQL's policy network")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = train_all(
        args,
        args.methods.split(","),
        seeds,
        lambda method: ["--agent", method, "--policy", args.policy, *extra],
    )
    if args.eval_every:
        plot_learning_curves(args, rows)
    result = {"env": args.env, "steps": args.steps, "seeds": seeds, "runs": rows, "summary": summarize(rows)}
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2))
    (args.out / "comparison.md").write_text(markdown(args, result["summary"]))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
