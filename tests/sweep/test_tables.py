"""What a sweep writes: the study and task tables, the curves, and `--collect` over old run folders."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from tests.sweep.conftest import TASK
from training.sweep.cli import main
from training.sweep.curves import curve_of_run, plot_learning_curves
from training.sweep.tables import (
    Heading,
    study_markdown,
    summarize,
    task_markdown,
    task_table,
    with_also_rows,
)


def old_run(folder: Path, method: str, seed: int, rate: float, **extra) -> dict:
    """A run folder as benchmarks/ablate.py left it: final_evaluation.json, metrics.csv, evaluations.csv."""
    run_dir = folder / f"{method}-seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text(
        "step,critic/loss,mfi/loss,actor/q\n5,1.0,0.5,-2.0\n10,0.8,0.4,-1.0\n"
    )
    (run_dir / "evaluations.csv").write_text(
        "step,success_rate,success_rate_stderr\n5,0.25,0.1\n10,0.5,0.1\n"
    )
    row = {
        "method": method, "seed": seed, "success_rate": rate, "success_rate_stderr": 0.07,
        "mean_return": -100.0, "wall_seconds": 1.0, "steps_trained": 10, "train_steps_per_second": 20.0,
        "policy_latency_ms_p50": 1.0, "num_candidates": 5, "run_dir": str(run_dir), **extra,
    }  # fmt: skip
    (run_dir / "final_evaluation.json").write_text(json.dumps(row))
    return row


def test_collect_tables_old_run_folders_and_rows_of_retired_arms(tmp_path, capsys):
    out = tmp_path / "study"
    rows = [old_run(out, "paper", 0, 0.2), old_run(out, "paper", 1, 0.4), old_run(out, "fql", 0, 0.6)]
    retired = {**rows[0], "method": "retired-arm"}
    (out / "study.json").write_text(json.dumps({"env": TASK, "steps": 10, "runs": [retired]}))
    (out / "fql-seed1").mkdir()  # a run still training: no final_evaluation.json
    assert main(["--collect", "--steps", "10", "--out", str(out)]) == 0
    rebuilt = json.loads((out / "study.json").read_text())
    assert [r["method"] for r in rebuilt["runs"]] == ["retired-arm", "fql", "paper", "paper"]
    assert rebuilt["summary"]["paper"]["success_rate_mean"] == pytest.approx(0.3)
    table = (out / "study.md").read_text()
    assert "| retired-arm | (an arm this version of mfql-sweep does not define) |" in table
    assert "| paper | the paper's setting" in table and "+/- 0.14 (std over 2 seeds: 0.20, 0.40)" in table
    assert "| 0.25 / 0.50; 0.25 / 0.50 |" in table  # the curves, from evaluations.csv
    for picture in ("study.png", "study-losses.png"):
        assert (out / picture).stat().st_size > 1000
    with pytest.raises(SystemExit):
        main(["--collect", "--out", str(tmp_path / "nothing")])
    assert "no finished run" in capsys.readouterr().err


def test_collect_reads_a_task_grid_and_writes_the_task_table(tmp_path):
    out = tmp_path / "grid"
    for task, rates in (("task1", (0.2, 0.4)), ("task2", (0.6, 1.0))):
        for seed, rate in enumerate(rates):
            old_run(out / task, "fql", seed, rate)
    args = ["--collect", "--env", "cube-single-play-singletask-v0", "--tasks", "1,2", "--out", str(out)]
    assert main(args) == 0
    grid = json.loads((out / "tasks.json").read_text())
    assert grid["envs"] == {f"task{n}": f"cube-single-play-singletask-task{n}-v0" for n in (1, 2)}
    assert grid["arms"]["fql"]["task_mean"] == pytest.approx(0.55)
    assert "| fql | 0.30 | 0.80 | 0.55 +/- 0.21 (std over seeds) |" in (out / "tasks.md").read_text()
    # without --steps the tables state the steps the runs trained (old_run: 10), not a default
    assert grid["steps"] == 10 and (out / "tasks.md").read_text().startswith("10 steps, seeds 0,1,")


def test_the_study_table_says_how_many_steps_a_time_budget_left_each_seed():
    rows = [
        {
            "method": "lr-constant", "seed": seed, "success_rate": 0.5, "success_rate_stderr": 0.07,
            "train_steps_per_second": 20.0, "steps_trained": steps, "policy_latency_ms_p50": 1.0,
        }
        for seed, steps in ((0, 150_000), (1, 140_500))
    ]  # fmt: skip
    heading = Heading(TASK, 200_000, "0,1", 50, ["--time-budget-minutes", "120"])
    curves = {("lr-constant", 0): [{"step": 100_000, "success_rate": 0.25}]}
    table = study_markdown(heading, rows, curves, lambda name: "what it tests")
    # (150000 + 140500) / 20 / 2 s = 121 min on average; rows without a mean return show "-"
    assert "| 0.25 | - | 20.0 | 121 (150k, 140k steps) |" in table
    rows[0]["mean_return"], rows[1]["mean_return"] = -1500.0, -1000.0
    assert "| -1250.0 | 20.0 | 121 (150k, 140k steps) |" in study_markdown(heading, rows, curves, str)
    rows[1].pop("mean_return")  # a mean over some of the seeds would mislead: none
    assert summarize(rows)["lr-constant"]["mean_return_mean"] is None


def test_the_task_table_means_over_tasks_only_for_arms_that_finished_every_task():
    def row(method, seed, rate):
        return {"method": method, "seed": seed, "success_rate": rate}

    rows_by_task = {
        "task1": [row("fql", 0, 0.2), row("fql", 1, 0.4), row("mfql", 0, 0.6)],
        "task2": [row("fql", 0, 0.6), row("fql", 1, 1.0)],
    }
    table = task_table(rows_by_task)
    assert table["fql"]["success_rate_by_task"] == pytest.approx({"task1": 0.3, "task2": 0.8})
    assert table["fql"]["task_mean"] == pytest.approx(0.55)
    assert table["fql"]["task_mean_stdev_over_seeds"] == pytest.approx(0.2121, abs=1e-4)
    assert table["mfql"]["task_mean"] is None and table["mfql"]["success_rate_by_task"] == {"task1": 0.6}
    heading = Heading("", 30000, "0,1", 50, [])
    text = task_markdown(heading, {"task1": "a-task1-v0", "task2": "a-task2-v0"}, table)
    assert "| mfql | 0.60 | - | - (not every task finished) |" in text


def test_the_learning_curves_plot_success_and_the_mean_return(monkeypatch, tmp_path):
    """study.png has a second panel, the mean return per episode (puzzle's dense reward moves
    before any episode succeeds); an evaluations.csv without the column still plots."""
    rows, curves = [], {}
    for method, header, values in (
        ("fql", "step,success_rate,success_rate_stderr,mean_return", "10000,0.0,0.0,-2247.2\n20000,0.0,0.0,-2100.5\n"),
        ("old", "step,success_rate,success_rate_stderr", "10000,0.5,0.1\n"),
    ):  # fmt: skip
        run_dir = tmp_path / method
        run_dir.mkdir()
        (run_dir / "evaluations.csv").write_text(f"{header}\n{values}")
        rows.append({"method": method, "seed": 0, "run_dir": str(run_dir)})
        curves[(method, 0)] = curve_of_run(run_dir)
    figures = []
    savefig = plt.Figure.savefig
    monkeypatch.setattr(
        plt.Figure, "savefig", lambda fig, *a, **k: figures.append(fig) or savefig(fig, *a, **k)
    )
    out = plot_learning_curves(rows, curves, "puzzle", tmp_path / "study.png")
    assert out.is_file() and out.stat().st_size > 0
    success_ax, return_ax = figures[0].axes
    assert success_ax.get_ylabel() == "success rate"  # the old run's file does not say its episodes
    assert [list(line.get_ydata()) for line in return_ax.get_lines()] == [[-2247.2, -2100.5]]
    assert len(success_ax.containers) == 2  # both runs' success curves, with error bars


def test_a_sweep_stopped_before_any_run_finished_writes_no_tables_and_says_so(tmp_path, capsys):
    from argparse import Namespace

    from training.sweep.cli import write_tables

    args = Namespace(out=tmp_path, preset="chunked", steps=100, eval_episodes=5, tasks="2")
    write_tables(args, {"task2": "puzzle-3x3-play-singletask-task2-v0"}, {}, {}, [])
    assert "no finished run" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_rounds_are_absolute_so_tune_can_restore_a_sweep_given_a_relative_out(tmp_path, monkeypatch):
    from training.sweep.runner import rounds

    (tmp_path / "study/tune/round1").mkdir(parents=True)
    (tmp_path / "study/tune/round12").mkdir()
    monkeypatch.chdir(tmp_path)
    found = rounds(Path("study/tune"))
    assert [p.name for p in found] == ["round1", "round12"] and all(p.is_absolute() for p in found)


def test_a_run_continued_in_a_new_round_keeps_its_earlier_evaluations_in_the_curve(tmp_path):
    """Tune holds only what a trial reported in its own round; the run folder holds the rest."""
    from training.sweep.cli import with_earlier_rounds

    run = tmp_path / "task2" / "bon-seed0"
    run.mkdir(parents=True)
    (run / "evaluations.csv").write_text(
        "step,success_rate,success_rate_stderr,mean_return\n20000,0.0,0.0,-1818\n40000,0.1,0.06,-1500\n"
    )
    this_round = [
        {"step": 40000, "success_rate": 0.12, "success_rate_stderr": 0.06, "mean_return": -1490.0},
        {"step": 60000, "success_rate": 0.2, "success_rate_stderr": 0.08, "mean_return": -1200.0},
    ]
    merged = with_earlier_rounds(tmp_path, ("task2", "bon", 0), this_round)
    assert [(p["step"], p["success_rate"]) for p in merged] == [(20000, 0.0), (40000, 0.12), (60000, 0.2)]
    assert with_earlier_rounds(tmp_path, ("task2", "fql", 0), this_round) == this_round  # no folder


def test_the_curve_says_how_many_episodes_its_evaluations_ran_not_the_final_ones(tmp_path):
    """`--curve-episodes 25 --eval-episodes 50`: the plotted points are the 25-episode ones."""
    from training.sweep.curves import episodes_label

    run_dir = tmp_path / "bon-seed0"
    run_dir.mkdir()
    (run_dir / "evaluations.csv").write_text(
        "step,success_rate,success_rate_stderr,mean_return,mean_episode_length,episodes,num_candidates\n"
        "20000,0.0,0.0,-516.32,500.0,25,32\n40000,0.04,0.04,-581.24,494.04,25,32\n"
    )
    curve = curve_of_run(run_dir)
    assert [p["episodes"] for p in curve] == [25, 25]
    assert episodes_label([curve]) == "success rate (25 episodes each)"
    assert episodes_label([curve, [{"step": 5, "success_rate": 0.1, "episodes": 10}]]) == "success rate"


def test_a_second_evaluation_becomes_a_row_and_a_curve_of_its_own(tmp_path):
    """A run trained with --also-eval-renoise-time before `--also-eval` existed (its final row's
    "also" one dict, evaluations_also.csv without a variant column): a row named for it in the
    study and task tables; collecting again does not repeat it."""
    out = tmp_path / "grid"
    also = {"renoise_time": 0.3, "success_rate": 0.8, "success_rate_stderr": 0.06, "mean_return": -900.0,
            "policy_latency_ms_p50": 2.0}  # fmt: skip
    row = old_run(out / "task2", "bon", 0, 0.3, also=also)
    (Path(row["run_dir"]) / "evaluations_also.csv").write_text(
        "step,success_rate,success_rate_stderr,renoise_time\n5,0.45,0.1,0.3\n10,0.75,0.1,0.3\n"
    )
    old_run(out / "task2", "fql", 0, 0.1)
    args = ["--collect", "--env", "cube-single-play-singletask-v0", "--tasks", "2", "--out", str(out)]
    for _ in range(2):  # the second time study.json holds the row already: made anew, not repeated
        assert main(args) == 0
        study = json.loads((out / "task2" / "study.json").read_text())
        assert [r["method"] for r in study["runs"]] == ["bon", "bon (re-noised 0.3)", "fql"]
    derived = study["runs"][1]
    assert (derived["success_rate"], derived["mean_return"], derived["policy_latency_ms_p50"]) == (
        0.8,
        -900.0,
        2.0,
    )
    assert derived["steps_trained"] == 10 and derived["train_steps_per_second"] == 20.0  # the same training
    table = (out / "task2" / "study.md").read_text()
    assert (
        "| bon (re-noised 0.3) | the `bon` runs, acting another way (`--also-eval renoise=0.3`) | 0.80"
        in table
    )
    assert "| 0.45 / 0.75 |" in table and "| 0.25 / 0.50 |" in table  # each row's own curve
    tasks = (out / "tasks.md").read_text()
    assert "| bon | 0.30 | 0.30 |" in tasks and "| bon (re-noised 0.3) | 0.80 | 0.80 |" in tasks
    one_step = with_also_rows([{**row, "also": {**also, "renoise_time": 0.0}}])
    assert [r["method"] for r in one_step] == ["bon", "bon (one step)"]


def test_each_other_way_of_acting_becomes_a_row_and_a_curve_of_its_own(tmp_path):
    """A run with two other ways of acting (--also-eval-renoise-time 0.3 and --also-eval
    renoise=0.3,aggregate=min,candidates=64): two rows, each with its own K, success and curve
    (evaluations_also.csv's rows by variant, interleaved as the trainer writes them)."""
    out = tmp_path / "grid"
    shared = {"success_rate_stderr": 0.06, "policy_latency_ms_p50": 2.0, "renoise_time": 0.3}
    also = [
        {**shared, "variant": "renoise=0.3", "label": "re-noised 0.3", "critic_aggregate": "mean",
         "num_candidates": 32, "success_rate": 0.8, "mean_return": -900.0},
        {**shared, "variant": "renoise=0.3,aggregate=min,candidates=64", "label": "re-noised 0.3, min, K = 64",
         "critic_aggregate": "min", "num_candidates": 64, "success_rate": 0.9, "mean_return": -800.0},
    ]  # fmt: skip
    row = old_run(out / "task2", "bon", 0, 0.3, also=also)
    (Path(row["run_dir"]) / "evaluations_also.csv").write_text(
        "step,success_rate,success_rate_stderr,num_candidates,variant,renoise_time,critic_aggregate\n"
        '5,0.45,0.1,32,renoise=0.3,0.3,mean\n5,0.55,0.1,64,"renoise=0.3,aggregate=min,candidates=64",0.3,min\n'
        '10,0.75,0.1,32,renoise=0.3,0.3,mean\n10,0.85,0.1,64,"renoise=0.3,aggregate=min,candidates=64",0.3,min\n'
    )
    args = ["--collect", "--env", "cube-single-play-singletask-v0", "--tasks", "2", "--out", str(out)]
    assert main(args) == 0
    runs = json.loads((out / "task2" / "study.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["bon", "bon (re-noised 0.3)", "bon (re-noised 0.3, min, K = 64)"]
    assert [(r["success_rate"], r["num_candidates"]) for r in runs[1:]] == [(0.8, 32), (0.9, 64)]
    table = (out / "task2" / "study.md").read_text()
    assert "| 0.45 / 0.75 |" in table and "| 0.55 / 0.85 |" in table  # each variant's own curve
    assert "(`--also-eval renoise=0.3,aggregate=min,candidates=64`) | 0.90" in table


def puzzle_run(folder: Path, method: str, seed: int, rate: float, made: float, left: float, **extra) -> dict:
    """A finished puzzle run: its final row and evaluations.csv carry the presses (puzzle_progress)."""
    progress = {"presses_per_episode": made, "presses_left_start": 9.0, "presses_left_end": left,
                "presses_left_best": left - 0.5}  # fmt: skip
    row = old_run(folder, method, seed, rate, puzzle_progress=progress, **extra)
    (folder / f"{method}-seed{seed}" / "evaluations.csv").write_text(
        "step,success_rate,success_rate_stderr,mean_return,presses_per_episode,presses_left_end\n"
        "5,0.0,0.0,-2300,2.9,6.72\n10,0.2,0.08,-2200,5.4,3.68\n"
    )
    return row


def test_puzzle_tables_show_the_presses_made_and_left(tmp_path):
    """On a puzzle grid the study table has the final presses per episode and presses left (means
    over seeds), the task table a second table of presses left per task, and the progress table
    the presses left after each evaluation; a study without them keeps its columns."""
    out = tmp_path / "grid"
    puzzle_run(out / "task4", "mfql", 0, 0.1, made=5.0, left=4.0)
    also = [{"variant": "renoise=0.3", "label": "re-noised 0.3", "success_rate": 0.3, "success_rate_stderr": 0.06,
             "puzzle_progress": {"presses_per_episode": 7.0, "presses_left_start": 9.0, "presses_left_end": 2.0}}]  # fmt: skip
    puzzle_run(out / "task4", "mfql", 1, 0.2, made=6.0, left=3.0, also=also)
    puzzle_run(out / "task5", "mfql", 0, 0.0, made=2.0, left=6.5)
    old_run(out / "task5", "fql", 0, 0.5)  # a run of an older version: no presses
    args = ["--collect", "--env", "puzzle-3x3-play-singletask-v0", "--tasks", "4,5", "--out", str(out)]
    assert main(args) == 0
    study = (out / "task4" / "study.md").read_text()
    assert "| training min | presses per episode / left at the end (final; of those at the start) |" in study
    assert "| 5.50 / 3.50 (of 9.0) |" in study
    assert "| 7.00 / 2.00 (of 9.0) |" in study  # seed 1 re-noised: its own presses, not its run's
    (fql_line,) = [
        line for line in (out / "task5" / "study.md").read_text().splitlines() if line.startswith("| fql |")
    ]
    assert fql_line.endswith("| 20.0 | 0 | - |")  # recorded no presses: "-"
    grid = json.loads((out / "tasks.json").read_text())["arms"]
    assert grid["mfql"]["presses_left_end_by_task"] == pytest.approx({"task4": 3.5, "task5": 6.5})
    assert "presses_left_end_by_task" not in grid["fql"]
    tasks = (out / "tasks.md").read_text()
    assert "| mfql | 3.50 | 6.50 |" in tasks and "| fql | - | - |" in tasks
    assert (
        main(["--progress", "--env", "puzzle-3x3-play-singletask-v0", "--tasks", "4", "--out", str(out)]) == 0
    )
    progress = (out / "progress.md").read_text()
    assert (
        "| mfql seed 1 | finished (10 steps) | 5 0.00 (6.7 left), 10 0.20 (3.7 left) | -100 | 0.20 +/- 0.07 (3.0 left) |"
        in progress
    )
    rows = [{key: value for key, value in row.items() if key != "puzzle_progress"} for row in
            json.loads((out / "task4" / "study.json").read_text())["runs"]]  # fmt: skip
    assert "presses" not in study_markdown(Heading(TASK, 10, "0,1", 50, []), rows, {}, str)
