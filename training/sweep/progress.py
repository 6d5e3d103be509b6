"""Where a grid stands, finished or not: `mfql-sweep --progress` writes `<out>/progress.md`.

A grid of 100k-step runs spans several sessions (`--resume`), and `--collect` tables only the
runs that finished. The progress table reads every run folder as it is on disk: its newest
checkpoint against the steps it was asked for, each evaluation so far for each way it acts
(evaluations.csv, and evaluations_also.csv per `--also-eval` variant), the last evaluation's
mean return (on puzzle's dense return it moves long before an episode succeeds) and, once the
run finished, its final evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from training.checkpoint import CONFIG_FILE, list_checkpoints, step_of
from training.config import ActingVariant
from training.run_log import EVAL_ALSO_CSV, EVAL_CSV, TRAIN_CSV, read_also_evaluations
from training.sweep.curves import curve_of_run
from training.sweep.tables import FINAL_EVALUATION, Curve, also_rows_of, finished_row


@dataclass(frozen=True)
class WayOfActing:
    """One way a run acts in its evaluations: its own (`label` None) or an `--also-eval` variant."""

    label: str | None
    curve: Curve
    final: dict | None  # the final evaluation's numbers, once the run finished


@dataclass(frozen=True)
class RunProgress:
    arm: str
    seed: int
    run_dir: Path
    checkpoint_step: int | None  # newest checkpoint (None: none written yet)
    steps: int | None  # offline steps the run was asked for (from its checkpoint's config)
    finished: bool
    ways: list[WayOfActing] = field(default_factory=list)


def run_folders(folder: Path) -> list[tuple[str, int, Path]]:
    """(arm, seed, run folder) of every run under a task folder: `<arm>-seed<N>` and the
    vectorised seeds' `<arm>-seeds/seed<N>`; folders without a run in them are skipped."""
    found = []
    for path in sorted(folder.glob("*-seed*")):
        arm, _, seed = path.name.rpartition("-seed")
        if path.is_dir() and seed.isdigit():
            found.append((arm, int(seed), path))
    for path in sorted(folder.glob("*-seeds/seed*")):
        seed = path.name.removeprefix("seed")
        if path.is_dir() and seed.isdigit():
            found.append((path.parent.name.removesuffix("-seeds"), int(seed), path))
    return [(arm, seed, path) for arm, seed, path in found if is_run(path)]


def is_run(path: Path) -> bool:
    return any((path / name).exists() for name in ("checkpoints", EVAL_CSV, TRAIN_CSV, FINAL_EVALUATION))


def asked_steps(checkpoint: Path | None, row: dict | None) -> int | None:
    if row is not None and "steps_trained" in row:
        return int(row["steps_trained"])
    if checkpoint is None:
        return None
    config = json.loads((checkpoint / CONFIG_FILE).read_text()).get("config", {})
    return config.get("offline_steps")


def run_progress(arm: str, seed: int, run_dir: Path) -> RunProgress:
    checkpoints = list_checkpoints(run_dir)
    newest = checkpoints[-1] if checkpoints else None
    row = finished_row(run_dir)
    final_also = {also["variant"]: also for also in also_rows_of(row)} if row else {}
    ways = [WayOfActing(None, curve_of_run(run_dir), row)]
    # the ways it evaluated during training, then any only its final evaluation used (--eval-every 0)
    for spec in dict.fromkeys([*read_also_evaluations(run_dir), *final_also]):
        ways.append(
            WayOfActing(
                ActingVariant.parse(spec).label,
                curve_of_run(run_dir, EVAL_ALSO_CSV, spec),
                final_also.get(spec),
            )
        )
    return RunProgress(
        arm,
        seed,
        run_dir,
        step_of(newest) if newest else None,
        asked_steps(newest, row),
        row is not None,
        ways,
    )


def grid_progress(folders: dict[str, Path]) -> dict[str, list[RunProgress]]:
    """Every run of each task folder (key: the task, "" for a grid without tasks)."""
    return {key: [run_progress(*found) for found in run_folders(folder)] for key, folder in folders.items()}


def thousands(step: int) -> str:
    return f"{step // 1000}k" if step % 1000 == 0 else str(step)


def state_cell(run: RunProgress) -> str:
    if run.finished:
        return f"finished ({thousands(run.steps)} steps)" if run.steps else "finished"
    of = f" of {thousands(run.steps)}" if run.steps else ""
    if run.checkpoint_step is None:
        return "no checkpoint yet"
    return f"checkpoint {thousands(run.checkpoint_step)}{of}"


def left_suffix(presses_left: float | None) -> str:
    """` (6.7 left)`: a puzzle evaluation's presses still needed at the end; "" elsewhere."""
    return "" if presses_left is None else f" ({presses_left:.1f} left)"


def curve_cell(curve: Curve) -> str:
    """`20k 0.00, 40k 0.04`; on puzzle envs with the presses left at the end: `20k 0.00 (6.7 left)`."""
    cells = (
        f"{thousands(p['step'])} {p['success_rate']:.2f}{left_suffix(p.get('presses_left_end'))}"
        for p in curve
    )
    return ", ".join(cells) or "-"


def final_cell(final: dict | None) -> str:
    if final is None:
        return "-"
    left = final.get("puzzle_progress", {}).get("presses_left_end")
    return f"{final['success_rate']:.2f} +/- {final.get('success_rate_stderr', 0.0):.2f}{left_suffix(left)}"


def last_return_cell(way: WayOfActing) -> str:
    source = way.final if way.final is not None else (way.curve[-1] if way.curve else {})
    return f"{source['mean_return']:.0f}" if "mean_return" in source else "-"


def progress_markdown(out: Path, envs: dict[str, str], progress: dict[str, list[RunProgress]]) -> str:
    lines = [
        f"# Progress of `{out}`",
        "",
        "Each run as it is on disk: its newest checkpoint, the success of each evaluation during",
        "training (step: rate; on puzzle tasks with the presses still needed at the episodes' end),",
        "the mean return of the last one, and the final evaluation once it finished; a run's other",
        "ways of acting (`--also-eval`) on rows of their own.",
    ]
    for key, runs in progress.items():
        lines += ["", f"## {key or out.name}" + (f" (`{envs[key]}`)" if envs.get(key) else ""), ""]
        if not runs:
            lines.append("No run yet.")
            continue
        lines += [
            "| run | state | success during training | last mean return | final success |",
            "|---|---|---|---|---|",
        ]
        for run in runs:
            for way in run.ways:
                name = run.arm if way.label is None else f"{run.arm} ({way.label})"
                lines.append(
                    f"| {name} seed {run.seed} | {state_cell(run)} | {curve_cell(way.curve)} | "
                    f"{last_return_cell(way)} | {final_cell(way.final)} |"
                )
    return "\n".join(lines) + "\n"


def write_progress(out: Path, envs: dict[str, str]) -> str:
    """`<out>/progress.md` for the tasks of `envs` (key "" : `out` itself); returns its text."""
    folders = {key: out / key if key else out for key in envs}
    text = progress_markdown(out, envs, grid_progress(folders))
    out.mkdir(parents=True, exist_ok=True)
    (out / "progress.md").write_text(text)
    return text
