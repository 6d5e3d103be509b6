"""A sweep's tables: per task, each arm's final success (mean +/- std over seeds) and speed
(`study.md`, `study.json`), and with several tasks each arm's success per task and its mean
over the tasks (`tasks.md`, `tasks.json`).

A row is one finished run (`trainable.final_row`): from Tune's results for the runs a sweep
trained, from `final_evaluation.json` in the run folders and from earlier `study.json` files
for runs of earlier rounds, including those the hand-made runner (benchmarks/ablate.py) wrote.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from training.config import ActingVariant
from training.run_log import EVAL_ALSO_CSV

# Each finished run's row, kept in its run directory: a sweep stopped part-way keeps the runs it
# finished, and `--collect` tables them (the hand-made runner's name, so its folders read too).
FINAL_EVALUATION = "final_evaluation.json"

# An evaluation during training: {"step", "success_rate", "success_rate_stderr", "mean_return"},
# on puzzle envs also "presses_per_episode" and "presses_left_end" (training/puzzle_progress.py).
Curve = list[dict]


@dataclass(frozen=True)
class Heading:
    """What a study's table states above its rows."""

    env: str
    steps: int
    seeds: str
    eval_episodes: int
    flags: list[str]  # flags every arm shares


def run_directory(out: Path, task: str, arm: str, seed: int) -> Path:
    """`<out>[/<task>]/<arm>-seed<N>`: the hand-made runner's layout, which `--collect` reads."""
    return (out / task if task else out) / f"{arm}-seed{seed}"


def finished_row(run_dir: Path) -> dict | None:
    """The row a finished run keeps in its directory, or None (never run, or stopped before it)."""
    path = run_dir / FINAL_EVALUATION
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_rows(folder: Path) -> list[dict]:
    """Every run of a study folder with a final evaluation: study.json's rows (earlier rounds,
    arms of other versions), then finished runs it does not list (a round stopped part-way). A
    run directory's own row wins over study.json's: it is the run as it is on disk now."""
    study = folder / "study.json"
    rows = json.loads(study.read_text())["runs"] if study.is_file() else []
    by_run = {(row["method"], row["seed"]): row for row in rows}
    for path in sorted(
        [*folder.glob(f"*/{FINAL_EVALUATION}"), *folder.glob(f"*-seeds/seed*/{FINAL_EVALUATION}")]
    ):
        row = json.loads(path.read_text())
        by_run[(row["method"], row["seed"])] = row  # replaced in place, or added at the end
    return list(by_run.values())


# What another way of acting measured itself; the rest of its row is its run's
ALSO_ROW_KEYS = (
    "success_rate",
    "success_rate_stderr",
    "mean_return",
    "num_candidates",
    "policy_latency_ms_p50",
    "puzzle_progress",
)


def also_rows_of(row: dict) -> list[dict]:
    """A run row's other ways of acting ("also"): a list, or in rows written before several
    were possible, one dict that names only its re-noise time."""
    also = row.get("also") or []
    if isinstance(also, dict):
        variant = ActingVariant(also["renoise_time"])
        also = [{**also, "variant": variant.spec, "label": variant.label}]
    return also


def with_also_rows(rows: list[dict]) -> list[dict]:
    """`rows` with, after each run that also evaluated other ways (its row's "also"), each of
    those evaluations as a row of its own: the same run (seed, steps, training speed), its own
    success, return, K and latency, named `<arm> (<variant's label>)`. Such rows are made from
    their run's row alone, so those an earlier table holds (study.json) are dropped and made anew."""
    table = []
    for row in rows:
        if "also_of" in row:
            continue
        table.append(row)
        for also in also_rows_of(row):
            table.append(
                {
                    # its presses are its own (none where it recorded none), never its run's
                    **{key: value for key, value in row.items() if key not in ("also", "puzzle_progress")},
                    **{key: also[key] for key in ALSO_ROW_KEYS if key in also},
                    "method": f"{row['method']} ({also['label']})",
                    "also_of": row["method"],
                    "evaluations_file": EVAL_ALSO_CSV,
                    "evaluations_variant": also["variant"],
                }
            )
    return table


def merge_rows(recorded: list[dict], trained: list[dict]) -> list[dict]:
    """This round's rows after the recorded ones of other (arm, seed) pairs."""
    done = {(row["method"], row["seed"]) for row in trained}
    return [row for row in recorded if (row["method"], row["seed"]) not in done] + trained


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
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


def spread_cell(mine: list[dict], summary_row: dict) -> str:
    if len(mine) == 1:  # one seed: the spread is the evaluation's own standard error
        return f"+/- {mine[0]['success_rate_stderr']:.2f} (s.e.)"
    each = ", ".join(f"{r['success_rate']:.2f}" for r in sorted(mine, key=lambda r: r["seed"]))
    return f"+/- {summary_row['success_rate_stdev']:.2f} (std over {len(mine)} seeds: {each})"


def minutes_cell(mine: list[dict], steps: int) -> str:
    """Training time alone (the trainer's steps/s: evaluations and checkpoints excluded)."""
    trained = [r.get("steps_trained", steps) for r in mine]  # rows of older versions lack it
    minutes = (
        sum(n / r["train_steps_per_second"] for n, r in zip(trained, mine, strict=True)) / len(mine) / 60
    )
    if any(n != steps for n in trained):  # stopped by a time budget
        return f"{minutes:.0f} ({', '.join(f'{n // 1000}k' for n in trained)} steps)"
    return f"{minutes:.0f}"


def presses_cell(mine: list[dict]) -> str:
    """A puzzle arm's final presses per episode and presses left at the end (means over its
    seeds) and the presses left at the start; "-" where a run did not record them."""
    progress = [r.get("puzzle_progress") for r in mine]
    if not progress or any(p is None for p in progress):
        return "-"
    made, end, start = (
        statistics.fmean(p[key] for p in progress)
        for key in ("presses_per_episode", "presses_left_end", "presses_left_start")
    )
    return f"{made:.2f} / {end:.2f} (of {start:.1f})"


def study_markdown(heading: Heading, rows: list[dict], curves: dict, describe) -> str:
    """study.md: one line per arm; `curves[(arm, seed)]` the evaluations during training. A
    puzzle study (rows with `puzzle_progress`) also shows the final presses: success is all or
    nothing, so they tell a policy that presses towards the goal from one that stops."""
    puzzle = any("puzzle_progress" in r for r in rows)
    lines = [
        f"{heading.env}, {heading.steps} steps, seeds {heading.seeds}, final evaluation over "
        f"{heading.eval_episodes} episodes, base flags `{' '.join(heading.flags)}`",
        "",
        "| arm | what it tests | success (final) | during training | mean return (final) | steps/s | training min |"
        + (" presses per episode / left at the end (final; of those at the start) |" if puzzle else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if puzzle else ""),
    ]
    for name, row in summarize(rows).items():
        mine = [r for r in rows if r["method"] == name]
        during = "; ".join(
            " / ".join(f"{point['success_rate']:.2f}" for point in curves[(name, r["seed"])])
            for r in mine
            if curves.get((name, r["seed"]))
        )
        lines.append(
            f"| {name} | {describe(name)} | {row['success_rate_mean']:.2f} {spread_cell(mine, row)} "
            f"| {during} | {mean_return_cell(row)} | {row['train_steps_per_second']:.1f} "
            f"| {minutes_cell(mine, heading.steps)} |" + (f" {presses_cell(mine)} |" if puzzle else "")
        )
    return "\n".join(lines) + "\n"


def task_table(rows_by_task: dict[str, list[dict]]) -> dict:
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
        # puzzle tasks: the presses left at the end of the final evaluation (mean over seeds)
        left = {
            key: statistics.fmean(r["puzzle_progress"]["presses_left_end"] for r in mine)
            for key, rows in rows_by_task.items()
            if (mine := [r for r in rows if r["method"] == arm]) and all("puzzle_progress" in r for r in mine)
        }
        table[arm] = {
            "success_rate_by_task": per_task,
            # the mean over tasks only when the arm finished every task (else it would mislead)
            "task_mean": statistics.fmean(per_task.values()) if len(per_task) == len(rows_by_task) else None,
            "task_mean_stdev_over_seeds": statistics.stdev(complete) if len(complete) > 1 else None,
            "seeds": sorted(by_seed),
            **({"presses_left_end_by_task": left} if left else {}),
        }
    return table


def task_markdown(heading: Heading, envs: dict[str, str], table: dict) -> str:
    keys = list(envs)
    lines = [
        f"{heading.steps} steps, seeds {heading.seeds}, final evaluation over {heading.eval_episodes} "
        f"episodes per run; tasks: {', '.join(f'{k} = {envs[k]}' for k in keys)}; each task's runs and "
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
    if any("presses_left_end_by_task" in row for row in table.values()):
        lines += [
            "",
            "Presses still needed at the end of the final evaluation's episodes (puzzle tasks; mean "
            "over episodes and seeds; 0 at the goal):",
            "",
            f"| arm | {' | '.join(keys)} |",
            f"|---|{'---|' * len(keys)}",
        ]
        for arm, row in table.items():
            left = row.get("presses_left_end_by_task", {})
            lines.append(f"| {arm} | {' | '.join(f'{left[k]:.2f}' if k in left else '-' for k in keys)} |")
    return "\n".join(lines) + "\n"
