"""mfql-sweep on a real Ray: a local grid, a two-node cluster, a trial that dies, a sweep stopped
and resumed. Each starts Ray (seconds) and trains tiny runs on two shared cores: slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from safetensors.torch import load_file  # noqa: E402

from tests.sweep.conftest import TINY  # noqa: E402
from training.sweep import trainable  # noqa: E402
from training.sweep.cli import build_parser, main, shared_settings  # noqa: E402
from training.sweep.runner import Grid, Placement, collect_results, ray_session, run_grid  # noqa: E402

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["--steps", "40", "--eval-every", "20", "--curve-episodes", "1", "--eval-episodes", "1"]


def sweep_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset-dir", str(data_dir), "--out", str(out), *SMALL, *extra, "--", *TINY]


def test_a_local_grid_of_two_arms_and_two_seeds_writes_the_study(sweep_data_dir, tmp_path):
    out = tmp_path / "study"
    assert main(sweep_args(sweep_data_dir, out, "--arms", "paper,fql", "--seeds", "0,1")) == 0
    study = json.loads((out / "study.json").read_text())
    assert [(r["method"], r["seed"]) for r in study["runs"]] == [
        ("paper", 0),
        ("paper", 1),
        ("fql", 0),
        ("fql", 1),
    ]
    assert all(r["steps_trained"] == 40 and r["train_steps_per_second"] > 0 for r in study["runs"])
    table = (out / "study.md").read_text()
    assert "| paper |" in table and "| fql |" in table and "(std over 2 seeds" in table
    assert "| 0.00 / 0.00; 0.00 / 0.00 |" in table  # two evaluations per seed, from Tune's results
    for picture in ("study.png", "study-losses.png"):
        assert (out / picture).stat().st_size > 1000
    stored = json.loads(
        sorted((out / "paper-seed0" / "checkpoints").glob("step_*/config.json"))[-1].read_text()
    )
    assert stored["config"]["agent_config"]["actor_lr_schedule"] == "warmup-cosine"
    assert stored["config"]["threads"] == 1 and stored["step"] == 40


def crash_after_step_20(config: dict) -> None:
    """The trial, dying (the whole worker process, as a lost node) right after its step-20 checkpoint, once."""
    marker = Path(config["sweep"]["out"]) / "crashed"
    if not marker.exists():
        report = trainable.ReportingTrainer.checkpoint

        def checkpoint_then_die(self):
            path = report(self)
            if self.step == 20:
                marker.touch()
                os._exit(1)
            return path

        trainable.ReportingTrainer.checkpoint = checkpoint_then_die
    trainable.train_trial(config)


def test_a_trial_that_dies_resumes_from_its_checkpoint_and_ends_with_the_same_weights(
    sweep_data_dir, tmp_path
):
    out = tmp_path / "crash"
    args = build_parser().parse_args(
        sweep_args(sweep_data_dir, out, "--eval-every", "0", "--checkpoint-every", "10")
    )
    shared = shared_settings(args, {"": "cube-single-play-singletask-task2-v0"}, ["lr-constant"])
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with ray_session(None):
        results = run_grid(
            crash_after_step_20, Grid([""], ["lr-constant"], [0], shared), Placement(), out / "tune", False
        )
    rows, _ = collect_results(results)
    assert (out / "crashed").exists() and rows[""][0]["steps_trained"] == 40
    steps = [
        int(line.split(",")[0])
        for line in (out / "lr-constant-seed0" / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert steps == [10, 20, 30, 40]  # steps 30-40 once, after the restart
    (result,) = results
    assert list(result.metrics_dataframe["step"]) == [10, 20, 30, 40, 40]  # resumed at 20, not from 0

    uninterrupted = tmp_path / "by-hand"
    flags = trainable.trial_flags(shared, "", "lr-constant", 0, uninterrupted)
    from training.train import main as train

    assert train(flags) == 0
    resumed = load_file(
        str(out / "lr-constant-seed0" / "checkpoints" / "step_000000040" / "model.safetensors")
    )
    by_hand = load_file(str(uninterrupted / "checkpoints" / "step_000000040" / "model.safetensors"))
    assert resumed.keys() == by_hand.keys()
    for key in by_hand:
        assert (resumed[key] == by_hand[key]).all(), key


def test_a_sweep_stopped_part_way_resumes_only_what_was_left(sweep_data_dir, tmp_path):
    out = tmp_path / "stopped"
    command = [
        sys.executable,
        "-m",
        "training.sweep.cli",
        *sweep_args(sweep_data_dir, out, "--arms", "fql", "--seeds", "0,1", "--jobs", "1"),
    ]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    finished = out / "fql-seed0" / "final_evaluation.json"
    deadline = time.monotonic() + 300
    while not finished.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)  # as Ctrl+C stops a sweep
    first.communicate(timeout=120)
    assert not (out / "fql-seed1" / "final_evaluation.json").exists()
    kept = finished.stat().st_mtime_ns
    command.insert(command.index("--"), "--resume")
    second = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "restoring" in second.stderr
    assert finished.stat().st_mtime_ns == kept  # the finished trial did not run again
    study = json.loads((out / "study.json").read_text())
    assert sorted(r["seed"] for r in study["runs"]) == [0, 1]


def test_a_sweep_on_a_two_node_cluster_places_trials_on_both_nodes(sweep_data_dir, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "cluster"
        args = build_parser().parse_args(sweep_args(sweep_data_dir, out, "--eval-every", "0"))
        shared = shared_settings(args, {"": "cube-single-play-singletask-task2-v0"}, ["fql"])
        with ray_session(cluster.address):
            results = run_grid(
                trainable.train_trial, Grid([""], ["fql"], [0, 1], shared), Placement(), out / "tune", False
            )
            nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(nodes) == 2
        assert {result.metrics["node_id"] for result in results} == nodes
        rows, _ = collect_results(results)
        assert sorted(r["seed"] for r in rows[""]) == [0, 1]
    finally:
        cluster.shutdown()


def test_the_chunked_bon_arm_tables_each_way_it_acts(sweep_data_dir, tmp_path):
    """The chunked preset's `bon` arm through Tune: its other ways of acting (re-noised 0.3;
    re-noised 0.3 ranked by the minimum over 64 candidates; one step from noise scaled by 0.5) reach Tune with every checkpoint and
    the study as rows of their own, each with its own K and curve."""
    out = tmp_path / "study"
    assert main(sweep_args(sweep_data_dir, out, "--preset", "chunked", "--arms", "bon", "--seeds", "0")) == 0
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert [(r["method"], r["num_candidates"]) for r in runs] == [
        ("bon", 32),
        ("bon (re-noised 0.3)", 32),
        ("bon (re-noised 0.3, min, K = 64)", 64),
        ("bon (noise x 0.5)", 32),
    ]
    table = (out / "study.md").read_text()
    assert table.count("| 0.00 / 0.00 |") == 4  # each row's two evaluations during training
    reported = [
        json.loads(line)
        for path in out.rglob("result.json")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    minimum = "eval_also/renoise=0.3,aggregate=min,candidates=64/success_rate"
    assert [r["step"] for r in reported if minimum in r] == [20, 40]
