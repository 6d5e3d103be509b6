"""The MFQL study: one command trains a grid of arms on the same data, seeds and step budget.

Each arm is a set of `mfql-train` flags on top of a shared base (MLP 4x256 policy and critics,
the reference's critic lr and discount). Every run evaluates during training (25 episodes by
default) and once more at the end (50 episodes, the same evaluation seeds for every arm),
then the study writes `<out>/study.json`, `<out>/study.md` (a table) and `<out>/study.png`
(success and the mean return per episode during training, one line per arm and seed: on a
dense reward such as puzzle's the return moves long before any episode succeeds).

    python benchmarks/ablate.py --dataset-dir data --steps 30000 --jobs 2 --threads 1 \\
        --arms paper,lr-constant,draws-4 --out runs/study

`--tasks 1,2,3,4,5` runs the grid on each of a family's singletask tasks (`--env` names the
family's singletask env, e.g. `puzzle-3x3-play-singletask-v0`): one study folder per task,
`<out>/task<N>/`, and `<out>/tasks.md` with each arm's success per task and its mean over the
tasks. `--resume` keeps the finished runs and continues the ones a stopped session left
(checkpoints every `--checkpoint-every` steps), so a grid longer than a session runs in rounds:

    python benchmarks/ablate.py --env puzzle-3x3-play-singletask-v0 --tasks 1,2,3,4,5 \
        --dataset-dir data --steps 30000 --jobs 2 --threads 1 --arms fql,alpha-1000 \
        --resume --checkpoint-every 5000 --out runs/puzzle-tasks

`--list` prints the arms. Extra `mfql-train` flags for every arm go after `--`,
e.g. `-- --compile`. The arms and what each tests are in ARMS below; docs/results/mfql-study.md
and docs/results/chunks.md report the ones that were run. Runs already recorded in
`<out>/study.json` are kept, so a study can be run in rounds into the same folder. Each run
also keeps its row in `<run dir>/final_evaluation.json` the moment it is evaluated, so a study
stopped part-way loses only the runs still training: `--collect` writes the table and plots
from every finished run in `--out`, training nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_methods import (  # noqa: E402
    FINAL_EVALUATION,
    add_run_arguments,
    arm_colours,
    mean_return_cell,
    plot_learning_curves,
    split_extra,
    summarize,
    train_all,
    train_and_evaluate,
)

BASE = [
    "--policy", "mlp", "--mlp-hidden", "256,256,256,256", "--critic-hidden", "256,256,256,256",
    "--hyperparameters", "reference", "--precision", "auto",
]  # fmt: skip
CONSTANT_LR = ["--actor-lr-schedule", "constant", "--actor-lr", "3e-4"]
# The reference's actor lr, spelled out: puzzle-3x3's family default is CONSTANT_LR (its study,
# training/config.py), so the arms named for the paper's setting name its schedule themselves.
REFERENCE_LR = ["--actor-lr-schedule", "warmup-cosine", "--actor-lr", "1e-4"]
ANCHORED_ALPHA_30 = [*CONSTANT_LR, "--alpha", "30", "--anchor-weight", "300"]

# name -> (what it tests, its flags on top of BASE)
ARMS: dict[str, tuple[str, list[str]]] = {
    "paper": ("the paper's setting, schedules squeezed into the run", REFERENCE_LR),
    "horizon-1M": ("schedules as if 1M steps, stopped early", [*REFERENCE_LR, "--schedule-steps", "1000000"]),
    "lr-constant": ("constant actor lr 3e-4 (FQL's), no warm-up or decay", CONSTANT_LR),
    "lr-constant-fp32": (
        "lr-constant with fp32 matmuls (the bf16 check)",
        [*CONSTANT_LR, "--precision", "fp32"],
    ),
    "draws-4": ("constant lr + 4 (e, t) draws per state in the MFI loss", [*CONSTANT_LR, "--mfi-draws", "4"]),
    "paper-draws-4": ("the paper's setting + 4 (e, t) draws per state", [*REFERENCE_LR, "--mfi-draws", "4"]),
    "draws-4-alpha-1000": (
        "draws-4 with alpha 1000",
        [*CONSTANT_LR, "--mfi-draws", "4", "--alpha", "1000"],
    ),
    # alpha 10 is the reference code's default. The gradient diagnosis (docs/results/mfql-study.md) puts the BC
    # term's consistent part at ~9x the Q term's at alpha 300, so alpha 10-30 is where the two
    # are of one size, as they are in FQL at its alpha.
    "alpha-10": ("constant lr, alpha 10 (the reference code's default)", [*CONSTANT_LR, "--alpha", "10"]),
    "alpha-30": ("constant lr, alpha 30", [*CONSTANT_LR, "--alpha", "30"]),
    "alpha-50": (
        "constant lr, alpha 50 (between alpha-30's drift and alpha-100's stall)",
        [*CONSTANT_LR, "--alpha", "50"],
    ),
    "alpha-100": ("constant lr, alpha 100", [*CONSTANT_LR, "--alpha", "100"]),
    "alpha-1000": ("constant lr, alpha 1000", [*CONSTANT_LR, "--alpha", "1000"]),
    # The puzzle sweep (issue 23; docs/results/puzzle.md): no MFQL alpha is published for puzzle,
    # whose family default is FQL's 1000, so lr-constant there is alpha-1000 (now the family's
    # default setting) and these span it.
    "alpha-300": ("constant lr, alpha 300 (cube-single's default)", [*CONSTANT_LR, "--alpha", "300"]),
    "alpha-3000": ("constant lr, alpha 3000", [*CONSTANT_LR, "--alpha", "3000"]),
    "dit": ("constant lr, the reference's DiT policy", [*CONSTANT_LR, "--policy", "dit"]),
    # MFQL's Q during training sits at about -27 where FQL's reaches -50 on the same data,
    # while FQL succeeds more: the best-of-K target (a max over K candidates) may overestimate.
    # The paper's hyperparameter K is 1 or 5; K = 1 is FQL's target (one candidate).
    "k-1": (
        "constant lr, K = 1 (critic target and action from one candidate)",
        [*CONSTANT_LR, "--num-candidates", "1"],
    ),
    # The gradient diagnosis: rows with t <= 0.25 carry most of the MFI gradient's noise, and the
    # policy acts only at t = 1, where the Q term pulls and the BC constraint is thinnest.
    "time-linear": (
        "constant lr, MFI flow times with density 2t (fewer near the data end, more near t = 1)",
        [*CONSTANT_LR, "--flow-time-sampling", "linear"],
    ),
    "ema": (
        "constant lr, an EMA of the policy's weights acts (rate 0.001)",
        [*CONSTANT_LR, "--policy-ema-rate", "0.001"],
    ),
    # alpha 30 with the K = 5 target let the policy climb to actions the critic overrates
    # (Q of its action -14 at 20k vs -27 at alpha 300, farther from the data, 0.00 success):
    # FQL's balance of BC and Q (alpha 30) with FQL's target (one candidate); acting stays best-of-5.
    "alpha-30-target-k1": (
        "constant lr, alpha 30, K = 1 in the critic target, best-of-5 when acting",
        [*CONSTANT_LR, "--alpha", "30", "--num-candidates", "1", "--eval-num-candidates", "5"],
    ),
    # The fourth session's reading: in FQL the BC anchor is a per-noise regression target at the
    # very output the Q term moves; in MFQL the t = 1 output is one point of a noisy loss over
    # all t. The anchor (`--anchor-weight`, FQL's alpha as its weight) gives MFQL that target
    # from its own 2-step sample, so the noisy MFI weight can drop to where Q moves the policy.
    "anchor-alpha-30": (
        "constant lr, alpha 30, one-step action anchored (weight 300) to the network's own 2-step sample",
        ANCHORED_ALPHA_30,
    ),
    "anchor-alpha-100": (
        "constant lr, alpha 100, one-step action anchored (weight 300) to the network's own 2-step sample",
        [*CONSTANT_LR, "--alpha", "100", "--anchor-weight", "300"],
    ),
    # FQL's set-up with MFQL's one network: the anchor keeps alpha 30 on the data, and the
    # critic's target takes one candidate (K = 1, FQL's target; the K = 5 target overrates
    # Q: -27 against FQL's -50 on the same data); acting stays best-of-5.
    "anchor-alpha-30-target-k1": (
        "anchor-alpha-30 with K = 1 in the critic target, best-of-5 when acting",
        [*ANCHORED_ALPHA_30, "--num-candidates", "1", "--eval-num-candidates", "5"],
    ),
    "anchor-alpha-10": (
        "constant lr, alpha 10 (the reference's default), one-step action anchored (weight 300)",
        [*CONSTANT_LR, "--alpha", "10", "--anchor-weight", "300"],
    ),
    "fql": ("the FQL baseline (its own settings)", ["--agent", "fql"]),
    # Action chunks (issue 21, Q-chunking arXiv 2507.07969): the policy emits 5 actions at once,
    # the critic learns 5-step backups, evaluation executes each chunk open-loop.
    "chunk-5": (
        "lr-constant with action chunks of 5 (Q-chunking's h = 5)",
        [*CONSTANT_LR, "--action-horizon", "5"],
    ),
    "fql-chunk-5": (
        "FQL with action chunks of 5 (Q-chunking's QC-FQL)",
        ["--agent", "fql", "--action-horizon", "5"],
    ),
}


def plot_losses(rows: list[dict], out: Path) -> Path:
    """study-losses.png: critic loss, BC loss (MFQL: MFI; FQL: flow matching) and Q per arm."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("critic/loss", "critic loss"),
        ("mfi/loss|bc_flow/loss", "BC loss"),
        ("actor/q", "Q of the policy's action"),
    )
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = arm_colours(len(methods))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for row in rows:
        with open(Path(row["run_dir"]) / "metrics.csv", newline="") as handle:
            lines = list(csv.DictReader(handle))
        steps = [int(line["step"]) for line in lines]
        for ax, (keys, title) in zip(axes, panels, strict=True):
            key = next((k for k in keys.split("|") if k in lines[0]), None)
            if key is None:
                continue
            values = [float(line[key]) for line in lines]
            window = max(1, len(values) // 30)  # a running mean, so runs can be told apart
            smooth = [
                sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                for i in range(len(values))
            ]
            ax.plot(
                steps,
                smooth,
                color=colours[methods.index(row["method"]) % len(colours)],
                linestyle=("-", "--", ":")[int(row["seed"]) % 3],
                label=f"{row['method']} seed {row['seed']}",
            )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("gradient step")
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = out / "study-losses.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def recorded_rows(out: Path) -> list[dict]:
    """Every run of the study folder with a final evaluation: study.json's rows (earlier rounds,
    arms of other versions), then finished runs it does not list (a round stopped part-way). A
    run directory's own row wins over study.json's: it is the run as it is on disk now."""
    study = out / "study.json"
    rows = json.loads(study.read_text())["runs"] if study.is_file() else []
    by_run = {(row["method"], row["seed"]): row for row in rows}
    for path in sorted([*out.glob(f"*/{FINAL_EVALUATION}"), *out.glob(f"*-seeds/seed*/{FINAL_EVALUATION}")]):
        row = json.loads(path.read_text())
        by_run[(row["method"], row["seed"])] = row  # replaced in place, or added at the end
    return list(by_run.values())


def describe_arm(name: str) -> str:
    """What an arm tests; study.json may hold arms that another version of this script ran."""
    return ARMS[name][0] if name in ARMS else "(an arm this version of ablate.py does not define)"


def markdown(args: argparse.Namespace, rows: list[dict], summary: dict) -> str:
    lines = [
        f"{args.env}, {args.steps} steps, seeds {args.seeds}, final evaluation over {args.eval_episodes} "
        f"episodes, base flags `{' '.join(BASE + args.extra)}`",
        "",
        "| arm | what it tests | success (final) | during training | mean return (final) | steps/s | training min |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        mine = [r for r in rows if r["method"] == name]
        curve = []
        for run in mine:
            evaluations = Path(run["run_dir"]) / "evaluations.csv"  # none with --eval-every 0
            if evaluations.is_file():
                logged = evaluations.read_text().splitlines()[1:]
                curve.append(" / ".join(f"{float(line.split(',')[1]):.2f}" for line in logged))
        if len(mine) == 1:  # one seed: the spread is the evaluation's own standard error
            spread = f"+/- {mine[0]['success_rate_stderr']:.2f} (s.e.)"
        else:
            each = ", ".join(f"{r['success_rate']:.2f}" for r in sorted(mine, key=lambda r: r["seed"]))
            spread = f"+/- {row['success_rate_stdev']:.2f} (std over {len(mine)} seeds: {each})"
        # training time alone (the trainer's steps/s): evaluations and checkpoints excluded
        steps = [r.get("steps_trained", args.steps) for r in mine]  # rows of older versions lack it
        minutes = (
            sum(n / r["train_steps_per_second"] for n, r in zip(steps, mine, strict=True)) / len(mine) / 60
        )
        if any(n != args.steps for n in steps):  # stopped by a time budget
            minutes_and_steps = f"{minutes:.0f} ({', '.join(f'{n // 1000}k' for n in steps)} steps)"
        else:
            minutes_and_steps = f"{minutes:.0f}"
        lines.append(
            f"| {name} | {describe_arm(name)} | {row['success_rate_mean']:.2f} {spread} "
            f"| {'; '.join(curve)} | {mean_return_cell(row)} | {row['train_steps_per_second']:.1f} | {minutes_and_steps} |"
        )
    return "\n".join(lines) + "\n"


def task_env(env: str, task: int) -> str:
    """The singletask env of `task` in `env`'s family: `...-singletask[-taskK]-vN` ->
    `...-singletask-task<task>-vN` (OGBench's names)."""
    match = re.fullmatch(r"(.+-singletask)(?:-task\d+)?(-v\d+)", env)
    if match is None:
        raise ValueError(
            f"--env {env!r}: --tasks needs a singletask env name, e.g. puzzle-3x3-play-singletask-v0"
        )
    return f"{match[1]}-task{task}{match[2]}"


def task_studies(args: argparse.Namespace, tasks: list[int]) -> dict[str, argparse.Namespace]:
    """One study per task (its env, its folder `<out>/task<N>`), or the one study of `--env`."""
    if not tasks:
        return {"": args}
    return {
        f"task{task}": argparse.Namespace(
            **{**vars(args), "env": task_env(args.env, task), "out": args.out / f"task{task}"}
        )
        for task in tasks
    }


def train_studies(
    args: argparse.Namespace, studies: dict[str, argparse.Namespace], arms: list[str], seeds: list[int]
) -> dict[str, list[dict]]:
    """Every (task, arm, seed) run, `--jobs` at a time across the tasks: two cores stay busy
    even where a task has a single run. Rows grouped by task, in the order of the grid."""

    def flags_of(name: str) -> list[str]:
        return [*BASE, *ARMS[name][1], *args.extra]

    for study in studies.values():
        study.out.mkdir(parents=True, exist_ok=True)
    if args.seeds_together or len(studies) == 1:
        return {key: train_all(study, arms, seeds, flags_of) for key, study in studies.items()}
    grid = [(key, arm, seed) for key in studies for arm in arms for seed in seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda r: train_and_evaluate(studies[r[0]], r[1], r[2], flags_of(r[1])), grid))
    return {key: [row for (k, _, _), row in zip(grid, rows, strict=True) if k == key] for key in studies}


def write_study(args: argparse.Namespace, rows: list[dict]) -> dict:
    """study.json, study.md, study.png and study-losses.png of one study folder; its summary."""
    if args.eval_every:
        plot_learning_curves(args, rows).rename(args.out / "study.png")
    plot_losses(rows, args.out)
    summary = summarize(rows)
    result = {"env": args.env, "steps": args.steps, "runs": rows, "summary": summary}
    (args.out / "study.json").write_text(json.dumps(result, indent=2))
    (args.out / "study.md").write_text(markdown(args, rows, summary))
    return summary


def task_table(args: argparse.Namespace, rows_by_task: dict[str, list[dict]]) -> dict:
    """Each arm's final success per task (mean over its seeds there) and its mean over the tasks.
    The spread of the task mean is over seeds: each seed's mean over the tasks it finished."""
    arms = list(dict.fromkeys(row["method"] for rows in rows_by_task.values() for row in rows))
    table = {}
    for arm in arms:
        per_task = {
            key: statistics.fmean(r["success_rate"] for r in rows if r["method"] == arm)
            for key, rows in rows_by_task.items()
            if any(r["method"] == arm for r in rows)
        }
        by_seed: dict[int, list[float]] = {}
        for rows in rows_by_task.values():
            for r in rows:
                if r["method"] == arm:
                    by_seed.setdefault(r["seed"], []).append(r["success_rate"])
        complete = [statistics.fmean(v) for v in by_seed.values() if len(v) == len(rows_by_task)]
        table[arm] = {
            "success_rate_by_task": per_task,
            # the mean over tasks only when the arm finished every task (else it would mislead)
            "task_mean": statistics.fmean(per_task.values()) if len(per_task) == len(rows_by_task) else None,
            "task_mean_stdev_over_seeds": statistics.stdev(complete) if len(complete) > 1 else None,
            "seeds": sorted(by_seed),
        }
    return table


def task_markdown(args: argparse.Namespace, envs: dict[str, str], table: dict) -> str:
    keys = list(envs)
    lines = [
        f"{args.steps} steps, seeds {args.seeds}, final evaluation over {args.eval_episodes} episodes "
        f"per run; tasks: {', '.join(f'{k} = {envs[k]}' for k in keys)}; each task's runs and "
        "curves in its folder (`<task>/study.md`, `<task>/study.png`)",
        "",
        f"| arm | {' | '.join(keys)} | mean over {len(keys)} tasks |",
        f"|---|{'---|' * len(keys)}---|",
    ]
    for arm, row in table.items():
        cells = [
            f"{row['success_rate_by_task'][k]:.2f}" if k in row["success_rate_by_task"] else "-" for k in keys
        ]
        if row["task_mean"] is None:
            mean = "- (not every task finished)"
        elif row["task_mean_stdev_over_seeds"] is None:
            mean = f"{row['task_mean']:.2f}"
        else:
            mean = f"{row['task_mean']:.2f} +/- {row['task_mean_stdev_over_seeds']:.2f} (std over seeds)"
        lines.append(f"| {arm} | {' | '.join(cells)} | {mean} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_extra(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser, steps=30_000, eval_every=10_000, out="runs/study")
    parser.add_argument(
        "--arms", default="paper,lr-constant,draws-4", help="comma-separated; --list shows all"
    )
    parser.add_argument(
        "--tasks",
        default="",
        help="comma-separated task numbers: the grid on each singletask task of --env's family, "
        "one folder per task under --out",
    )
    parser.add_argument("--list", action="store_true", help="print the arms and exit")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: write study.json/.md/.png from the finished runs in --out",
    )
    args = parser.parse_args(argv)
    args.extra = extra
    if args.list:
        for name, (what, flags) in ARMS.items():
            print(f"{name:12s} {what}: {' '.join(flags) or '(base only)'}")
        return 0
    try:
        tasks = [int(t) for t in args.tasks.split(",")] if args.tasks else []
    except ValueError:
        parser.error(f"--tasks {args.tasks!r}: expected comma-separated task numbers, e.g. 1,2,3,4,5")
    try:
        studies = task_studies(args, tasks)
    except ValueError as exc:
        parser.error(str(exc))
    if args.collect:
        rows_by_task = {key: recorded_rows(study.out) for key, study in studies.items()}
        if not any(rows_by_task.values()):
            parser.error(f"--collect: no finished run (no */{FINAL_EVALUATION}, no study.json) in {args.out}")
        rows_by_task = {key: rows for key, rows in rows_by_task.items() if rows}
        args.seeds = ",".join(
            str(s) for s in sorted({r["seed"] for rows in rows_by_task.values() for r in rows})
        )
    else:
        arms = args.arms.split(",")
        unknown = [name for name in arms if name not in ARMS]
        if unknown:
            parser.error(f"unknown arm(s) {unknown}; expected some of {list(ARMS)}")
        seeds = [int(s) for s in args.seeds.split(",")]
        trained = train_studies(args, studies, arms, seeds)
        done = {(name, seed) for name in arms for seed in seeds}  # this round replaces their rows
        rows_by_task = {
            key: [r for r in recorded_rows(studies[key].out) if (r["method"], r["seed"]) not in done] + rows
            for key, rows in trained.items()
        }
    for key, rows in rows_by_task.items():
        studies[key].seeds = args.seeds
        write_study(studies[key], rows)
        print((studies[key].out / "study.md").read_text())
    if tasks:
        table = task_table(args, rows_by_task)
        envs = {key: studies[key].env for key in rows_by_task}
        (args.out / "tasks.json").write_text(
            json.dumps({"envs": envs, "steps": args.steps, "arms": table}, indent=2)
        )
        (args.out / "tasks.md").write_text(task_markdown(args, envs, table))
        print((args.out / "tasks.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
