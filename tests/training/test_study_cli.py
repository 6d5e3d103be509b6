"""The study tools run end to end on a tiny generated dataset: benchmarks/ablate.py (a grid of
arms, one command, resumable in rounds) and the extended gradient diagnosis."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.test_cli_end_to_end import ENV, TASK, data_dir  # noqa: F401  (fixture)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["--batch-size", "16", "--mlp-hidden", "32,32", "--critic-hidden", "32,32"]


def run_study(data_dir: Path, out: Path, arms: str) -> subprocess.CompletedProcess:  # noqa: F811
    return subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "ablate.py"), "--env", TASK, "--dataset-dir", str(data_dir),
            "--steps", "10", "--arms", arms, "--eval-episodes", "1", "--eval-every", "5",
            "--curve-episodes", "1", "--threads", "1", "--jobs", "2", "--out", str(out), "--", *TINY,
        ],
        capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip


def test_study_runs_arms_in_rounds_and_diagnoses_a_checkpoint(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "study"
    first = run_study(data_dir, out, "paper,draws-4")
    assert first.returncode == 0, first.stderr[-3000:]
    # an arm that another version of ablate.py ran (study.json is shared by rounds)
    study = json.loads((out / "study.json").read_text())
    study["runs"].append({**study["runs"][0], "method": "retired-arm"})
    (out / "study.json").write_text(json.dumps(study))
    second = run_study(data_dir, out, "fql,ema,chunk-5")  # a later round adds to the same study
    assert second.returncode == 0, second.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    methods = [run["method"] for run in study["runs"]]
    assert methods == ["paper", "draws-4", "retired-arm", "fql", "ema", "chunk-5"]
    assert all(run["steps_trained"] == 10 for run in study["runs"])
    table = (out / "study.md").read_text()
    assert "| paper |" in table and "| draws-4 |" in table and "| fql |" in table
    assert "| retired-arm | (an arm this version of ablate.py does not define) |" in table
    for picture in ("study.png", "study-losses.png"):
        assert (out / picture).stat().st_size > 1000

    # a study stopped part-way keeps each finished run's row in its run dir: --collect tables them
    (out / "study.json").unlink()
    (out / "ema-seed0" / "final_evaluation.json").unlink()  # as if it was still training
    collect = [
        sys.executable,
        str(BENCHMARKS / "ablate.py"),
        "--collect",
        "--steps",
        "10",
        "--eval-every",
        "5",
    ]
    collected = subprocess.run(
        [*collect, "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert collected.returncode == 0, collected.stderr[-3000:]
    rebuilt = json.loads((out / "study.json").read_text())
    assert sorted(run["method"] for run in rebuilt["runs"]) == ["chunk-5", "draws-4", "fql", "paper"]
    assert {json.dumps(r, sort_keys=True) for r in rebuilt["runs"]} <= {
        json.dumps(r, sort_keys=True) for r in study["runs"]
    }  # the same rows the finished study held
    assert "| chunk-5 |" in (out / "study.md").read_text()
    empty = subprocess.run(
        [*collect, "--out", str(tmp_path / "nothing")], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert empty.returncode != 0 and "no finished run" in empty.stderr
    config_file = next((out / "draws-4-seed0" / "checkpoints").glob("step_*/config.json"))
    stored = json.loads(config_file.read_text())["config"]
    assert stored["agent_config"]["mfi_draws"] == 4
    assert stored["agent_config"]["actor_lr_schedule"] == "constant"
    assert stored["precision"] in ("fp32", "bf16")  # 'auto', resolved and recorded

    for run in ("paper-seed0", "chunk-5-seed0"):  # one action per step, and chunks of 5
        result = subprocess.run(
            [sys.executable, str(BENCHMARKS / "gradient_balance.py"), str(out / run), "--batches", "2"],
            capture_output=True, text=True, env=ENV, timeout=300, cwd=BENCHMARKS.parent,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout)
        draws = report["bc_grad_norm_by_mfi_draws"]
        assert list(draws) == ["M=1", "M=4", "M=16"] and all(v > 0 for v in draws.values())
        t_bins = report["bc_grad_norm_by_t_bin"]
        assert t_bins and all(v >= 0 for v in t_bins.values())
        assert -1.0 <= report["cosine_adam_step_q"] <= 1.0

    # the generator diagnosis, on an MFQL run that acts with its EMA copy, on FQL, on chunks of 5
    for run, agent in (("ema-seed0", "mfql"), ("fql-seed0", "fql"), ("chunk-5-seed0", "mfql")):
        result = subprocess.run(
            [sys.executable, str(BENCHMARKS / "generator_quality.py"), str(out / run), "--states", "64", "--k", "4"],
            capture_output=True, text=True, env=ENV, timeout=300, cwd=BENCHMARKS.parent,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout)
        assert report["agent"] == agent and (report["states"], report["k"]) == (64, 4)
        # cube actions in [-1, 1]^5 (a chunk's squared distance is per action)
        assert 0 <= report["nearest_sq_dist"] <= report["mean_sq_dist"] <= 4 * 5
        assert report["action_horizon"] == (5 if run.startswith("chunk") else 1)
        assert report["spread"] >= 0 and report["q_best_of_5"] >= report["q_candidates"] - 1e-4
        assert ("bc_flow_nearest_sq_dist" in report) == (agent == "fql")
    ema_config = json.loads(next((out / "ema-seed0" / "checkpoints").glob("step_*/config.json")).read_text())
    assert ema_config["config"]["agent_config"]["policy_ema_rate"] == 0.001


def test_the_study_table_says_how_many_steps_a_time_budget_left_each_seed(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import ablate

    rows = []
    for seed, steps_trained in ((0, 150_000), (1, 140_500)):
        run_dir = tmp_path / f"lr-constant-seed{seed}"
        run_dir.mkdir()
        (run_dir / "evaluations.csv").write_text("step,success_rate\n100000,0.25\n")
        rows.append(
            {
                "method": "lr-constant", "seed": seed, "success_rate": 0.5, "success_rate_stderr": 0.07,
                "train_steps_per_second": 20.0, "steps_trained": steps_trained, "run_dir": str(run_dir),
                "policy_latency_ms_p50": 1.0,
            }
        )  # fmt: skip
    args = ablate.argparse.Namespace(
        env=TASK, steps=200_000, seeds="0,1", eval_episodes=50, extra=["--time-budget-minutes", "120"]
    )
    table = ablate.markdown(args, rows, ablate.summarize(rows))
    # (150000 + 140500) / 20 / 2 s = 121 min on average; rows without a mean return show "-"
    assert "| - | 20.0 | 121 (150k, 140k steps) |" in table
    rows[0]["mean_return"], rows[1]["mean_return"] = -1500.0, -1000.0
    assert "| -1250.0 | 20.0 | 121 (150k, 140k steps) |" in ablate.markdown(
        args, rows, ablate.summarize(rows)
    )
    rows[1].pop("mean_return")  # a mean over some of the seeds would mislead: none
    assert ablate.summarize(rows)["lr-constant"]["mean_return_mean"] is None


def test_the_learning_curves_plot_success_and_the_mean_return(monkeypatch, tmp_path):
    """comparison.png has a second panel, the mean return per episode (puzzle's dense reward
    moves before any episode succeeds); an evaluations.csv without the column still plots."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import compare_methods
    import matplotlib.pyplot as plt

    rows = []
    for method, header, values in (
        (
            "fql",
            "step,success_rate,success_rate_stderr,mean_return",
            "10000,0.0,0.0,-2247.2\n20000,0.0,0.0,-2100.5\n",
        ),
        ("old", "step,success_rate,success_rate_stderr", "10000,0.5,0.1\n"),
    ):
        run_dir = tmp_path / method
        run_dir.mkdir()
        (run_dir / "evaluations.csv").write_text(f"{header}\n{values}")
        rows.append({"method": method, "seed": 0, "run_dir": str(run_dir)})
    figures = []
    savefig = plt.Figure.savefig
    monkeypatch.setattr(
        plt.Figure, "savefig", lambda fig, *a, **k: figures.append(fig) or savefig(fig, *a, **k)
    )
    args = compare_methods.argparse.Namespace(out=tmp_path, curve_episodes=25, env="puzzle")
    out = compare_methods.plot_learning_curves(args, rows)
    assert out.is_file() and out.stat().st_size > 0
    success_ax, return_ax = figures[0].axes
    assert [list(line.get_ydata()) for line in return_ax.get_lines()] == [[-2247.2, -2100.5]]
    assert len(success_ax.containers) == 2  # both runs' success curves, with error bars


def test_seeds_together_trains_each_arm_once_with_all_its_seeds(monkeypatch, tmp_path):
    """--seeds-together: one `mfql-train --seeds` process per arm, each seed evaluated from its folder."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import compare_methods

    commands, evaluated = [], []
    monkeypatch.setattr(compare_methods, "run", lambda command: commands.append(command) or "")
    monkeypatch.setattr(
        compare_methods,
        "evaluate_run",
        lambda args, name, seed, run_dir, seconds: evaluated.append((name, seed, run_dir)) or {"seed": seed},
    )
    parser = compare_methods.argparse.ArgumentParser()
    compare_methods.add_run_arguments(parser, steps=10, eval_every=0, out=str(tmp_path))
    args = parser.parse_args(["--seeds-together", "--seeds", "0,1"])
    rows = compare_methods.train_all(args, ["a", "b"], [0, 1], lambda arm: ["--flag", arm])
    assert len(commands) == 2 and len(rows) == 4
    for command in commands:
        assert command[command.index("--seeds") + 1] == "0,1" and "--seed" not in command
    assert sorted(evaluated) == [
        (arm, seed, tmp_path / f"{arm}-seeds" / f"seed{seed}") for arm in ("a", "b") for seed in (0, 1)
    ]
    commands.clear()
    args = parser.parse_args(["--seeds", "0,1"])  # without it: one process per run, as before
    monkeypatch.setattr(compare_methods, "evaluate_run", lambda *a: {})
    compare_methods.train_all(args, ["a"], [0, 1], lambda arm: [])
    assert sorted(c[c.index("--seed") + 1] for c in commands) == ["0", "1"]


def test_every_alpha_arm_trains_at_the_alpha_it_is_named_after(monkeypatch):
    """The puzzle sweep reads alpha from the arm's name: alpha-N must pass `--alpha N` once."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import ablate

    sweep = {"alpha-100", "alpha-300", "alpha-1000", "alpha-3000"}
    assert sweep <= set(ablate.ARMS)
    for name, (_, flags) in ablate.ARMS.items():
        if re.fullmatch(r"alpha-\d+", name):
            assert flags.count("--alpha") == 1, name
            assert float(flags[flags.index("--alpha") + 1]) == float(name.removeprefix("alpha-")), name


def test_task_env_names_each_singletask_task_of_a_family(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import ablate

    assert ablate.task_env("puzzle-3x3-play-singletask-v0", 3) == "puzzle-3x3-play-singletask-task3-v0"
    assert (
        ablate.task_env("cube-single-play-singletask-task2-v0", 5) == "cube-single-play-singletask-task5-v0"
    )
    with pytest.raises(ValueError, match="singletask env name"):
        ablate.task_env("cube-single-play-v0", 1)


@pytest.mark.slow  # about 40 s of two cores; test_resume_... below covers the logic by default
def test_a_task_grid_tables_every_task_and_resume_keeps_and_continues_runs(data_dir, tmp_path):  # noqa: F811
    """--tasks: one study folder per task and tasks.md; --resume: a finished run is kept untouched,
    a run stopped part-way continues from its checkpoint (not from scratch: --overwrite would
    have deleted the run folder), and the table is written again."""
    out = tmp_path / "grid"
    command = [
        sys.executable, str(BENCHMARKS / "ablate.py"), "--env", "cube-single-play-singletask-v0",
        "--tasks", "1,2", "--dataset-dir", str(data_dir), "--steps", "4", "--arms", "fql",
        "--eval-episodes", "1", "--eval-every", "0", "--threads", "1", "--jobs", "2",
        "--checkpoint-every", "2", "--resume", "--out", str(out), "--", *TINY, "--log-every", "1",
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    for task in (1, 2):
        final = sorted((out / f"task{task}" / "fql-seed0" / "checkpoints").glob("step_*"))[-1]
        config = json.loads((final / "config.json").read_text())
        assert config["config"]["env_name"] == f"cube-single-play-singletask-task{task}-v0"
        assert (out / f"task{task}" / "study.md").is_file()
    grid = json.loads((out / "tasks.json").read_text())
    assert grid["envs"] == {f"task{n}": f"cube-single-play-singletask-task{n}-v0" for n in (1, 2)}
    fql = grid["arms"]["fql"]
    assert set(fql["success_rate_by_task"]) == {"task1", "task2"} and fql["seeds"] == [0]
    assert fql["task_mean"] == pytest.approx(sum(fql["success_rate_by_task"].values()) / 2)
    assert "| arm | task1 | task2 | mean over 2 tasks |" in (out / "tasks.md").read_text()

    kept, stopped = out / "task1" / "fql-seed0", out / "task2" / "fql-seed0"
    kept_row = (kept / "final_evaluation.json").read_bytes()
    (stopped / "final_evaluation.json").unlink()  # as a session that ended at step 2 leaves it
    checkpoints = sorted((stopped / "checkpoints").glob("step_*"))
    assert [int(c.name.removeprefix("step_")) for c in checkpoints] == [2, 4]
    shutil.rmtree(checkpoints[-1])
    kept_checkpoint_time = sorted((kept / "checkpoints").glob("step_*"))[-1].stat().st_mtime_ns
    for run in (kept, stopped):
        (run / "marker").write_text("still here")
    second = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (kept / "final_evaluation.json").read_bytes() == kept_row  # not evaluated again
    assert sorted((kept / "checkpoints").glob("step_*"))[-1].stat().st_mtime_ns == kept_checkpoint_time
    assert (kept / "marker").exists() and (stopped / "marker").exists()  # resumed in place
    assert (checkpoints[-1] / "config.json").is_file() and (stopped / "final_evaluation.json").is_file()
    steps = [int(line.split(",")[0]) for line in (stopped / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first round, 3-4 from the resumed one
    assert json.loads((out / "tasks.json").read_text())["arms"]["fql"]["task_mean"] is not None


def test_resume_keeps_finished_runs_continues_stopped_ones_and_restarts_the_rest(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import compare_methods

    commands = []
    monkeypatch.setattr(compare_methods, "run", lambda command: commands.append(command) or "")
    monkeypatch.setattr(
        compare_methods, "evaluate_run", lambda args, name, seed, run_dir, s: {"evaluated": seed}
    )
    parser = compare_methods.argparse.ArgumentParser()
    compare_methods.add_run_arguments(parser, steps=30, eval_every=0, out=str(tmp_path))
    finished, stopped = tmp_path / "arm-seed0", tmp_path / "arm-seed1"
    (finished / "checkpoints" / "step_000000030").mkdir(parents=True)
    (finished / "final_evaluation.json").write_text('{"method": "arm", "seed": 0, "kept": true}')
    (stopped / "checkpoints" / "step_000000010").mkdir(parents=True)

    args = parser.parse_args(["--resume", "--checkpoint-every", "10"])
    rows = [compare_methods.train_and_evaluate(args, "arm", seed, []) for seed in (0, 1, 2)]
    assert rows == [{"method": "arm", "seed": 0, "kept": True}, {"evaluated": 1}, {"evaluated": 2}]
    assert len(commands) == 2  # the finished run trained nothing
    resumed, fresh = commands
    assert "--resume" in resumed and "--overwrite" not in resumed
    assert "--overwrite" in fresh and "--resume" not in fresh  # seed 2 had nothing to resume
    assert all(c[c.index("--checkpoint-every") + 1] == "10" for c in commands)

    commands.clear()
    args = parser.parse_args([])  # without --resume every run starts again, checkpointed at the end
    compare_methods.train_and_evaluate(args, "arm", 0, [])
    assert "--overwrite" in commands[0] and commands[0][commands[0].index("--checkpoint-every") + 1] == "30"


def test_the_task_table_means_over_tasks_only_for_arms_that_finished_every_task(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import ablate

    def row(method, seed, rate):
        return {"method": method, "seed": seed, "success_rate": rate}

    rows_by_task = {
        "task1": [row("fql", 0, 0.2), row("fql", 1, 0.4), row("mfql", 0, 0.6)],
        "task2": [row("fql", 0, 0.6), row("fql", 1, 1.0)],
    }
    table = ablate.task_table(None, rows_by_task)
    assert table["fql"]["success_rate_by_task"] == pytest.approx({"task1": 0.3, "task2": 0.8})
    assert table["fql"]["task_mean"] == pytest.approx(0.55)
    # seed 0's task mean 0.4, seed 1's 0.7: their std
    assert table["fql"]["task_mean_stdev_over_seeds"] == pytest.approx(0.2121, abs=1e-4)
    assert table["mfql"]["task_mean"] is None and table["mfql"]["success_rate_by_task"] == {"task1": 0.6}
    args = ablate.argparse.Namespace(steps=30000, seeds="0,1", eval_episodes=50)
    text = ablate.task_markdown(args, {"task1": "a-task1-v0", "task2": "a-task2-v0"}, table)
    assert "| fql | 0.30 | 0.80 | 0.55 +/- 0.21 (std over seeds) |" in text
    assert "| mfql | 0.60 | - | - (not every task finished) |" in text
