"""`mfql-sweep --progress`: where every run of a grid stands, finished or not, from its folder."""

from __future__ import annotations

import csv
import json

import pytest

from tests.sweep.conftest import TASK
from tests.sweep.test_tables import old_run
from training.sweep.cli import main
from training.train import main as train_main


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_progress_tables_unfinished_runs_with_every_way_they_act_and_finished_ones(
    tmp_path, two_episode_data_dir, capsys
):
    """A bon run stopped at its step-3 checkpoint of 6 (as a session's end leaves one) with a
    second way of acting, a finished run beside it, and a task with no run yet."""
    out = tmp_path / "grid"
    run = out / "task2" / "bon-seed2"
    assert (
        train_main(
            [
                "--env", TASK, "--dataset-dir", str(two_episode_data_dir), "--out", str(run),
                "--agent", "bon", "--policy", "mlp", "--mlp-hidden", "16,16", "--critic-hidden", "16,16",
                "--batch-size", "32", "--steps", "6", "--stop-after", "3", "--eval-every", "3",
                "--eval-episodes", "1", "--num-candidates", "4", "--action-horizon", "2", "--threads", "1",
                "--compile", "off", "--seed", "2", "--also-eval-renoise-time", "0.3",
            ]
        )
        == 0
    )  # fmt: skip
    old_run(out / "task2", "fql", 0, 0.6)
    (out / "task2" / "empty-seed1").mkdir()  # a folder Tune made before the run wrote anything
    capsys.readouterr()
    args = ["--progress", "--env", "cube-single-play-singletask-v0", "--tasks", "2,3", "--out", str(out)]
    assert main(args) == 0
    text = (out / "progress.md").read_text()
    assert text == capsys.readouterr().out.removesuffix("\n")
    (own,) = _rows(run / "evaluations.csv")
    (also,) = _rows(run / "evaluations_also.csv")
    for name, row in (("bon", own), ("bon (re-noised 0.3)", also)):
        assert (
            f"| {name} seed 2 | checkpoint 3 of 6 | 3 {float(row['success_rate']):.2f} | "
            f"{float(row['mean_return']):.0f} | - |"
        ) in text
    assert "| fql seed 0 | finished (10 steps) | 5 0.25, 10 0.50 | -100 | 0.60 +/- 0.07 |" in text
    assert "empty" not in text
    assert "## task3 (`cube-single-play-singletask-task3-v0`)\n\nNo run yet." in text
    assert not (out / "task2" / "study.json").exists()  # trains and tables nothing
    with pytest.raises(SystemExit):
        main([*args, "--collect"])
    assert "one at a time" in capsys.readouterr().err


def test_a_finished_runs_other_ways_show_their_final_evaluation(tmp_path):
    out = tmp_path / "study"
    also = [{"variant": "renoise=0.3", "label": "re-noised 0.3", "success_rate": 0.8,
             "success_rate_stderr": 0.06, "mean_return": -900.0}]  # fmt: skip
    row = old_run(out, "bon", 0, 0.3, also=also)
    (out / "bon-seed0" / "evaluations_also.csv").write_text(
        "step,success_rate,success_rate_stderr,variant,renoise_time\n10,0.75,0.1,renoise=0.3,0.3\n"
    )
    assert main(["--progress", "--out", str(out)]) == 0
    text = (out / "progress.md").read_text()
    assert "| bon (re-noised 0.3) seed 0 | finished (10 steps) | 10 0.75 | -900 | 0.80 +/- 0.06 |" in text
    assert json.loads((out / "bon-seed0" / "final_evaluation.json").read_text()) == row
    (out / "bon-seed0" / "evaluations_also.csv").unlink()  # evaluated only at the end (--eval-every 0)
    assert main(["--progress", "--out", str(out)]) == 0
    assert (
        "| bon (re-noised 0.3) seed 0 | finished (10 steps) | - | -900 | 0.80 +/- 0.06 |"
        in (out / "progress.md").read_text()
    )
