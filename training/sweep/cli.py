"""`mfql-sweep`: a grid of arms x seeds x tasks, each run one `mfql-train` run, on Ray Tune.

Each arm is a set of `mfql-train` flags on top of its preset's base (`--list` prints them).
Every run evaluates during training (`--curve-episodes`, every `--eval-every` steps) and once
more at the end (`--eval-episodes`, the same evaluation seeds for every arm); then the sweep
writes, per task folder, `study.json`, `study.md` (success mean +/- std over seeds, the curve,
mean return, steps/s, training minutes), `study.png` and `study-losses.png`, and with `--tasks`
`<out>/tasks.md` (each arm's success per task and its mean over the tasks).

    mfql-sweep --dataset-dir data --steps 30000 --threads 1 --arms paper,lr-constant,draws-4 \\
        --seeds 0,1,2 --out runs/study

On one machine trials run as Ray allows (`--cpus-per-trial`, default 1; `--jobs` caps them);
`--address HOST:6379` runs the same sweep on a Ray cluster (docs/sweeps.md). `--resume`
restores a stopped sweep without re-running finished trials; `--collect` trains nothing and
writes the tables from the finished runs in `--out` (also run folders of benchmarks/ablate.py,
the runner this replaced); `--progress` trains nothing and writes `<out>/progress.md`, where
every run stands, finished or not. Extra `mfql-train` flags for every arm go after `--`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.run_log import EVAL_CSV
from training.sweep.arms import PRESETS, GridError, arm_flags, describe_arm, parse_seeds, task_envs
from training.sweep.curves import curve_of_run, plot_learning_curves, plot_losses
from training.sweep.progress import write_progress
from training.sweep.tables import (
    Heading,
    merge_rows,
    recorded_rows,
    run_directory,
    study_markdown,
    summarize,
    task_markdown,
    task_table,
    with_also_rows,
)

# Each preset's arms when --arms is not given (issue 37's grid for `chunked`: the one-step
# best-of-N agent and QC-FQL as published).
DEFAULT_STEPS = 30_000
DEFAULT_ARMS = {
    "study": "paper,lr-constant,draws-4",
    "methods": "mfql,fql",
    "chunked": "bon,fql-chunk-5-alpha-100",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mfql-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="study", help="the arms and their base")
    p.add_argument("--arms", help=f"comma-separated; --list shows all (default {DEFAULT_ARMS})")
    p.add_argument("--list", action="store_true", help="print the preset's arms and exit")
    p.add_argument("--env", default="cube-single-play-singletask-task2-v0", help="singletask env")
    p.add_argument(
        "--tasks",
        default="",
        help="comma-separated: task numbers of --env's family and/or singletask env names; "
        "one folder per task under --out",
    )
    p.add_argument("--dataset-dir", type=Path, default=Path("data"))
    p.add_argument(
        "--steps",
        type=int,
        help=f"steps per run (default {DEFAULT_STEPS:,}; with --collect: the finished runs' own)",
    )
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--eval-episodes", type=int, default=50, help="episodes of each run's final evaluation")
    p.add_argument("--eval-every", type=int, default=10_000, help="evaluate during training (0: never)")
    p.add_argument("--curve-episodes", type=int, default=25, help="episodes per evaluation during training")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="checkpoint (and report to Tune) every N steps, so a trial that dies loses at most N "
        "(default --eval-every, else only at the end); evaluation steps always checkpoint",
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs Ray reserves for each trial")
    p.add_argument("--threads", type=int, help="torch threads per trial (default --cpus-per-trial)")
    p.add_argument("--jobs", type=int, help="at most this many trials at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int, default=2, help="restarts of a trial that dies")
    p.add_argument("--address", help="an existing Ray cluster, e.g. HEAD:6379 (default: Ray on this machine)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="restore the stopped sweep in --out (only unfinished trials run, from their checkpoints); "
        "for a changed grid, keep the runs that finished and continue the stopped ones",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: write the tables from the finished runs in --out",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="train nothing: write <out>/progress.md, where every run in --out stands, finished or "
        "not (its newest checkpoint, each evaluation so far, the final one once it finished)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/study"))
    p.add_argument("train_flags", nargs="*", help="after --: mfql-train flags for every arm")
    return p


def shared_settings(args: argparse.Namespace, envs: dict[str, str], arms: list[str]) -> dict:
    """What every trial reads (trainable.train_trial's config["sweep"]): plain JSON, so Tune can store it."""
    evaluations = ["--eval-every", str(args.eval_every), "--eval-episodes", str(args.curve_episodes)]
    threads = args.threads or max(1, int(args.cpus_per_trial))
    steps = args.steps or DEFAULT_STEPS
    train_flags = [
        *("--dataset-dir", str(args.dataset_dir.resolve()), "--steps", str(steps)),
        *(evaluations if args.eval_every else ["--eval-episodes", "0"]),
        *("--checkpoint-every", str(args.checkpoint_every or args.eval_every or steps)),
        *("--threads", str(threads)),
        # a trial Ray gives a GPU trains on it (auto: the driver, which checks the flags, may have none)
        *(["--device", "auto"] if args.gpus_per_trial > 0 else []),
    ]
    return {
        "envs": envs,
        "arm_flags": arm_flags(PRESETS[args.preset], arms),
        "train_flags": train_flags,
        "extra_flags": list(args.train_flags),
        "out": str(args.out.resolve()),
        "final_episodes": args.eval_episodes,
        "keep_finished": args.resume,
    }


def check_flags(shared: dict) -> None:
    """Every (task, arm) builds a TrainConfig here, before Ray starts: a bad flag fails in a second."""
    from training.sweep.trainable import trial_flags
    from training.train import build_parser as train_parser
    from training.train import config_from_args

    for task in shared["envs"]:
        for arm in shared["arm_flags"]:
            flags = trial_flags(shared, task, arm, 0, Path(shared["out"]) / "check")
            config_from_args(train_parser().parse_args(flags))


def train(args: argparse.Namespace, envs: dict[str, str], arms: list[str], seeds: list[int]):
    """Run the grid on Ray; this round's rows and curves by task."""
    from ray.exceptions import AuthenticationError

    from training.sweep.runner import (
        Grid,
        Placement,
        SweepBusy,
        auth_hint,
        collect_results,
        local_cpus,
        ray_session,
        run_grid,
        sweep_lock,
    )
    from training.sweep.trainable import train_trial

    shared = shared_settings(args, envs, arms)
    check_flags(shared)
    grid = Grid(list(envs), arms, seeds, shared)
    placement = Placement(args.cpus_per_trial, args.gpus_per_trial, args.jobs, args.max_failures)
    try:
        with sweep_lock(args.out / "tune"), ray_session(args.address, local_cpus(placement)):
            results = run_grid(train_trial, grid, placement, args.out / "tune", args.resume)
    except SweepBusy as exc:
        raise SystemExit(f"mfql-sweep: {exc}") from None
    except (ConnectionError, AuthenticationError) as exc:
        raise SystemExit(
            f"mfql-sweep: cannot join the Ray cluster at {args.address}: {exc}. {auth_hint()}"
        ) from exc
    rows, curves = collect_results(results)
    return rows, {key: with_earlier_rounds(args.out, key, curve) for key, curve in curves.items()}


def with_earlier_rounds(out: Path, key: tuple[str, str, int], curve: list[dict]) -> list[dict]:
    """A trial's curve with the evaluations its run folder holds from earlier rounds: a run
    continued in a new round reports to Tune only what it evaluates there (Tune's points win)."""
    points = {point["step"]: point for point in curve_of_run(run_directory(out, *key))}
    points.update({point["step"]: point for point in curve})
    return [points[step] for step in sorted(points)]


def write_study(folder: Path, heading: Heading, rows: list[dict], curves: dict, describe) -> None:
    """study.json, study.md, study.png and study-losses.png of one task folder."""
    if any(curves.values()):
        plot_learning_curves(rows, curves, heading.env, folder / "study.png")
    plot_losses([r for r in rows if "also_of" not in r], folder / "study-losses.png")  # one line per training
    result = {"env": heading.env, "steps": heading.steps, "runs": rows, "summary": summarize(rows)}
    (folder / "study.json").write_text(json.dumps(result, indent=2))
    (folder / "study.md").write_text(study_markdown(heading, rows, curves, describe))


def describe_row(preset, rows: list[dict], name: str) -> str:
    """What a table row tests: its arm's description, or for another way of acting (`also_of`) whose runs."""
    also = next((r for r in rows if r["method"] == name and "also_of" in r), None)
    if also is None:
        return describe_arm(preset, name)
    return f"the `{also['also_of']}` runs, acting another way (`--also-eval {also['evaluations_variant']}`)"


def write_tables(args, envs, rows_by_task, curves_by_run, extra_flags) -> None:
    if not any(rows_by_task.values()):  # e.g. a sweep stopped before any run finished
        print(f"mfql-sweep: no finished run in {args.out} yet; --resume continues the stopped ones")
        return
    preset = PRESETS[args.preset]
    seeds = ",".join(str(s) for s in sorted({r["seed"] for rows in rows_by_task.values() for r in rows}))
    headings = {}
    rows_by_task = {key: with_also_rows(rows) for key, rows in rows_by_task.items()}
    for key, rows in rows_by_task.items():
        folder = args.out / key if key else args.out
        curves = {
            (r["method"], r["seed"]): curves_by_run.get((key, r["method"], r["seed"]))
            or curve_of_run(
                Path(r["run_dir"]), r.get("evaluations_file", EVAL_CSV), r.get("evaluations_variant")
            )
            for r in rows
        }
        heading = Heading(
            envs.get(key, key), args.steps, seeds, args.eval_episodes, [*preset.base, *extra_flags]
        )
        write_study(folder, heading, rows, curves, lambda name, rows=rows: describe_row(preset, rows, name))
        print((folder / "study.md").read_text())
        headings[key] = heading
    if args.tasks:
        table = task_table(rows_by_task)
        shown = {key: envs[key] for key in rows_by_task}
        (args.out / "tasks.json").write_text(
            json.dumps({"envs": shown, "steps": args.steps, "arms": table}, indent=2)
        )
        (args.out / "tasks.md").write_text(task_markdown(next(iter(headings.values())), shown, table))
        print((args.out / "tasks.md").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.list:
        for name, (what, flags) in preset.arms.items():
            print(f"{name:12s} {what}: {' '.join(flags) or '(base only)'}")
        return 0
    try:
        envs = task_envs(args.env, args.tasks)
        arms = (args.arms or DEFAULT_ARMS[args.preset]).split(",")
        seeds = parse_seeds(args.seeds)
    except GridError as exc:
        parser.error(str(exc))
    if args.progress:
        if args.collect:
            parser.error("--progress and --collect: one at a time (--progress reads unfinished runs too)")
        print(write_progress(args.out, envs))
        return 0
    folders = {key: args.out / key if key else args.out for key in envs}
    recorded = {key: recorded_rows(folder) for key, folder in folders.items()}
    if args.collect:
        rows_by_task, curves = {key: rows for key, rows in recorded.items() if rows}, {}
        if not rows_by_task:
            parser.error(
                f"--collect: no finished run (no */final_evaluation.json, no study.json) in {args.out}"
            )
        if args.steps is None:  # the tables state what the runs trained, not a default
            trained = [r.get("steps_trained") for rows in rows_by_task.values() for r in rows]
            args.steps = max((steps for steps in trained if steps), default=DEFAULT_STEPS)
    else:
        args.steps = args.steps or DEFAULT_STEPS
        try:
            trained, curves = train(args, envs, arms, seeds)
        except (GridError, ValueError) as exc:
            print(f"mfql-sweep: {exc}", file=sys.stderr)
            return 2
        order = {(arm, seed): i for i, (arm, seed) in enumerate((a, s) for a in arms for s in seeds)}
        rows_by_task = {
            key: merge_rows(
                recorded[key], sorted(trained.get(key, []), key=lambda r: order[(r["method"], r["seed"])])
            )
            for key in envs
        }
        rows_by_task = {key: rows for key, rows in rows_by_task.items() if rows}
    write_tables(args, envs, rows_by_task, curves, args.train_flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
