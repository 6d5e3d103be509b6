"""The study tools run end to end on a tiny generated dataset: benchmarks/ablate.py (a grid of
arms, one command, resumable in rounds) and the extended gradient diagnosis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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
    # (150000 + 140500) / 20 / 2 s = 121 min on average
    assert "| 20.0 | 121 (150k, 140k steps) |" in table


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
