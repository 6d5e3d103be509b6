"""The README's data -> train -> eval path through the real console scripts, on a tiny generated dataset."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

TASK = "cube-single-play-singletask-task2-v0"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(name: str, module: str, *args: str) -> subprocess.CompletedProcess:
    executable = shutil.which(name, path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", module]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    result = run_cli(
        "mfql-data", "training.data.cli", "generate", "--env", "cube-single-v0", "--type", "play",
        "--episodes", "4", "--episode-length", "80", "--seed", "3", "--out",
        str(folder / "cube-single-play-v0.npz"), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return folder


def train_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--env", TASK, "--dataset-dir", str(data_dir), "--out", str(out), "--policy", "mlp",
        "--steps", "30", "--batch-size", "16", "--mlp-hidden", "64,64", "--critic-hidden", "64,64", "--log-every", "5", "--checkpoint-every", "10",
        "--eval-every", "0", "--eval-episodes", "1", "--threads", "1", *extra,
    ]  # fmt: skip


def test_generate_train_evaluate(data_dir, tmp_path):
    run = tmp_path / "run"
    result = run_cli("mfql-train", "training.train", *train_args(data_dir, run))
    assert result.returncode == 0, result.stderr[-3000:]
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps[-1] == "step_000000030"
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert all(float(r["critic/loss"]) >= 0 for r in rows)
    assert all(float(r["time/steps_per_s"]) > 0 for r in rows)  # training speed is logged
    assert (run / "curves.png").stat().st_size > 1000
    assert any(p.name.startswith("events.out.tfevents") for p in run.rglob("*"))
    with (run / "evaluations.csv").open() as handle:
        evaluations = list(csv.DictReader(handle))
    assert len(evaluations) == 1 and 0.0 <= float(evaluations[0]["success_rate"]) <= 1.0

    evaluated = run_cli(
        "mfql-eval", "training.evaluate", str(run), "--episodes", "2", "--num-candidates", "3"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout)
    assert report["episodes"] == 2 and report["step"] == 30 and report["num_candidates"] == 3
    assert report["env"] == TASK and report["mean_episode_length"] == 200.0  # cube-single horizon


def test_interrupted_then_resumed_run_ends_with_the_same_weights(data_dir, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    no_eval = ("--eval-episodes", "0")
    assert run_cli("mfql-train", "training.train", *train_args(data_dir, whole, *no_eval)).returncode == 0
    first = run_cli(
        "mfql-train", "training.train", *train_args(data_dir, parts, *no_eval, "--stop-after", "20")
    )
    assert first.returncode == 0, first.stderr[-3000:]
    refused = run_cli("mfql-train", "training.train", *train_args(data_dir, parts, *no_eval))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = run_cli("mfql-train", "training.train", *train_args(data_dir, parts, *no_eval, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(whole / "checkpoints" / "step_000000030" / "model.safetensors"))
    b = load_file(str(parts / "checkpoints" / "step_000000030" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_resume_may_change_the_thread_count_only(data_dir, tmp_path):
    run = tmp_path / "run"
    no_eval = ("--eval-episodes", "0")
    first = run_cli(
        "mfql-train", "training.train", *train_args(data_dir, run, *no_eval, "--stop-after", "10")
    )
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli(
        "mfql-train",
        "training.train",
        *train_args(data_dir, run, *no_eval, "--resume", "--threads", "2", "--steps", "99"),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stored = json.loads((run / "checkpoints" / "step_000000030" / "config.json").read_text())["config"]
    assert stored["threads"] == 2 and stored["offline_steps"] == 30  # --steps is the stored run's


def test_resume_mid_online_phase_may_extend_it(data_dir, tmp_path):
    run = tmp_path / "run"
    online = ("--eval-episodes", "0", "--steps", "4", "--checkpoint-every", "100")
    first = run_cli(
        "mfql-train",
        "training.train",
        *train_args(data_dir, run, *online, "--online-steps", "4", "--stop-after", "6"),
    )
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli(
        "mfql-train", "training.train", *train_args(data_dir, run, *online, "--online-steps", "8", "--resume")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = run / "checkpoints" / "step_000000012"
    stored = json.loads((final / "config.json").read_text())["config"]
    assert (stored["offline_steps"], stored["online_steps"]) == (4, 8)
    online_rows = load_file(str(final / "trainer.safetensors"))
    assert online_rows["buffer.rewards"].shape == (8,) and online_rows["buffer.observations"].shape == (8, 28)
    assert set(online_rows["buffer.masks"].tolist()) <= {0.0, 1.0}


def test_missing_dataset_is_reported_with_the_generate_command(tmp_path):
    result = run_cli("mfql-train", "training.train", *train_args(tmp_path / "empty", tmp_path / "run"))
    assert result.returncode == 2
    assert (
        "dataset file not found" in result.stderr
        and "mfql-data generate --env cube-single-v0" in result.stderr
    )


def test_training_speed_benchmark_counts_flops_against_the_matmul_ceiling():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "train_speed.py"
    result = subprocess.run(
        [
            sys.executable, str(script), "--steps", "1", "--threads", "1", "--width", "32",
            "--methods", "mfql-mlp,fql", "--precisions", "fp32,bf16", "--components", "--seeds", "2",
        ],
        capture_output=True, text=True, env=ENV, timeout=300, cwd=script.parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[: result.stdout.index("\n|")])
    assert set(report["matmul_gflop_per_s"]) == {"fp32", "bf16"}
    rows = {(row["method"], row["precision"]): row for row in report["results"]}
    assert set(rows) == {("mfql-mlp", "fp32"), ("mfql-mlp", "bf16"), ("fql", "fp32"), ("fql", "bf16")}
    mfql, fql = rows["mfql-mlp", "fp32"], rows["fql", "fp32"]
    # MFQL's step does the K=5 target and the JVP; FQL's does a 10-step flow: both count work.
    assert mfql["gflop_per_step"] > 0 and fql["gflop_per_step"] > 0
    assert rows["mfql-mlp", "bf16"]["gflop_per_step"] == pytest.approx(mfql["gflop_per_step"], rel=0.05)
    ceiling = report["matmul_gflop_per_s"]["fp32"] / mfql["gflop_per_step"]  # from rounded values
    assert mfql["steps_per_s_ceiling"] == pytest.approx(ceiling, rel=0.05)
    assert "flow_bc_steps_per_s" in mfql and "flow_bc_steps_per_s" not in fql
    assert len(mfql["components_ms"]) == 5 and all(ms > 0 for ms in mfql["components_ms"].values())
    assert report["sampling"]["share_of_fastest_step"] > 0
    seeds = {(row["method"], row["precision"]): row for row in report["seeds"]}
    assert set(seeds) == set(rows)
    assert all(row["seeds"] == 2 and row["time_of_seeds_over_one"] > 0 for row in seeds.values())


def test_training_speed_benchmark_times_each_method_against_its_reference_agent(tmp_path):
    """--reference runs the reference script once per method with that method's agent and sizes;
    a stand-in script (the JAX one needs its own venv) answers with the flags it was given."""
    fake = tmp_path / "reference_speed.py"
    fake.write_text(
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "rate = {'fql': 4.0, 'mfql': 2.0}[args[args.index('--agent') + 1]]\n"
        "print(json.dumps({'reference_steps_per_s': rate, 'argv': args}))\n"
    )
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "train_speed.py"
    result = subprocess.run(
        [
            sys.executable, str(script), "--steps", "1", "--threads", "1", "--width", "32",
            "--methods", "mfql-mlp,fql", "--precisions", "fp32", "--reference", str(tmp_path),
            "--reference-python", sys.executable, "--reference-script", str(fake),
        ],
        capture_output=True, text=True, env=ENV, timeout=300, cwd=script.parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[: result.stdout.index("\n|")])
    argv = {method: reference["argv"] for method, reference in report["reference"].items()}
    assert argv["mfql-mlp"][argv["mfql-mlp"].index("--actor") + 1] == "mlp"
    assert argv["fql"][argv["fql"].index("--critic-hidden") + 1] == "32,32,32,32"
    best = {row["method"]: row["steps_per_s"] for row in report["results"]}
    assert report["reference_ratio"]["fql"] == pytest.approx(best["fql"] / 4.0, rel=0.02)
    assert report["reference_ratio"]["mfql-mlp"] == pytest.approx(best["mfql-mlp"] / 2.0, rel=0.02)
    assert "| fql |" in result.stdout and "FLOP ceiling / reference" in result.stdout


def test_the_device_speed_script_runs_here_on_the_cpu():
    """benchmarks/gpu_speed.py is the prepared script for a lent GPU: it must work before one is."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_speed.py"
    result = subprocess.run(
        [
            sys.executable, str(script), "--device", "cpu", "--eager-only", "--width", "16", "--steps", "2",
            "--seeds", "2", "--methods", "fql,mfql-mlp", "--serving-repeats", "3",
            "--train-agents", "bon", "--train-steps", "12",
        ],
        capture_output=True, text=True, env=ENV, timeout=300, cwd=script.parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [row["method"] for row in report["training"]] == ["fql", "mfql-mlp"]
    assert all(
        row["eager_steps_per_s"] > 0 and row["seeds_eager_steps_per_s"] > 0 for row in report["training"]
    )
    assert {(row["provider"], row["batch"]) for row in report["serving"]} == {
        ("CPUExecutionProvider", 1),
        ("CPUExecutionProvider", 256),
    }
    # mfql-train --device: stopped, resumed on the CPU, resumed on the device, to the end
    (run,) = report["train_runs"]
    assert run["agent"] == "bon" and run["exit_codes"] == [0, 0, 0] and math.isfinite(run["critic_loss_last"])
