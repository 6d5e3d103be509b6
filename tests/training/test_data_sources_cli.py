"""The data sources through the real CLIs: convert, train, evaluate, export and serve."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import load_file

from exporters.cli import main as export_main
from tests.clients.live_server import running_server
from tests.training.lerobot_folders import synthetic_episodes, write_lerobot
from training.checkpoint import list_checkpoints
from training.data.cli import main as data_main
from training.evaluate import main as eval_main
from training.train import main as train_main

TASK = "cube-single-play-singletask-task2-v0"
TINY = [
    "--policy", "mlp", "--mlp-hidden", "32,32", "--critic-hidden", "32,32", "--batch-size", "16",
    "--threads", "1", "--compile", "off", "--log-every", "25", "--eval-episodes", "0",
]  # fmt: skip


def _weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(list_checkpoints(run)[-1] / "model.safetensors"))


def test_ogbench_data_converted_to_minari_trains_to_the_same_weights(
    two_episode_data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    converted = ["--dataset", TASK, "--dataset-dir", str(two_episode_data_dir)]
    assert data_main(["convert", *converted, "--to", "minari:tests/cube-single-task2-v0"]) == 0
    assert data_main(["convert", *converted, "--to", str(tmp_path / "plain.h5")]) == 0
    common = [*TINY, "--steps", "60", "--action-horizon", "3"]
    assert (
        train_main(
            [
                "--env",
                TASK,
                "--dataset-dir",
                str(two_episode_data_dir),
                "--out",
                str(tmp_path / "npz"),
                *common,
            ]
        )
        == 0
    )
    sources = {"minari": "minari:tests/cube-single-task2-v0", "h5": str(tmp_path / "plain.h5")}
    for name, source in sources.items():
        # Held-out episodes off: the OGBench run trains on the whole train file, so must these.
        assert (
            train_main(
                ["--dataset", source, "--val-fraction", "0", "--out", str(tmp_path / f"run-{name}"), *common]
            )
            == 0
        )
    reference = _weights(tmp_path / "npz")
    for name in sources:
        weights = _weights(tmp_path / f"run-{name}")
        assert sorted(weights) == sorted(reference)
        for key, value in reference.items():
            np.testing.assert_array_equal(weights[key], value, err_msg=f"{name}: {key}")
    description = json.loads((list_checkpoints(tmp_path / "run-minari")[-1] / "config.json").read_text())
    hashes = {description["dataset"]["content_sha256"]}
    hashes.add(
        json.loads((list_checkpoints(tmp_path / "npz")[-1] / "config.json").read_text())["dataset"][
            "content_sha256"
        ]
    )
    assert len(hashes) == 1  # the same transitions, whatever the file format
    assert (
        description["config"]["eval_env"] == "minari:tests/cube-single-task2-v0"
    )  # the stored env evaluates


def test_lerobot_data_trains_offline_only_then_exports_and_serves(tmp_path, capsys):
    folder = write_lerobot(tmp_path / "so100-pick", synthetic_episodes(episodes=6, length=25), "v3.0")
    run = tmp_path / "run"
    flags = [
        "--steps",
        "40",
        "--eval-every",
        "20",
        "--action-horizon",
        "4",
        "--reward",
        "sparse",
        "--val-fraction",
        "0.34",
    ]
    assert train_main(["--dataset", str(folder), "--out", str(run), *TINY, *flags]) == 0
    rows = (run / "validation.csv").read_text().splitlines()
    assert rows[0].startswith("step,val/critic/loss,val/mfi/loss") and [
        r.split(",")[0] for r in rows[1:]
    ] == ["20", "40"]
    assert (run / "curves.png").stat().st_size > 0
    capsys.readouterr()
    assert eval_main([str(run), "--episodes", "1"]) == 2
    refusal = capsys.readouterr().err
    assert "trained offline only" in refusal and "pass --eval-env" in refusal
    bundle = tmp_path / "repository/so100-pick/1"
    assert export_main([str(run), "--out", str(bundle), "--name", "so100-pick"]) == 0
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["obs_dim"] == 8 and metadata["action_dim"] == 3 and metadata["action_horizon"] == 4
    assert metadata["control_period_s"] == pytest.approx(1 / 20)
    assert metadata["data"]["format"] == "lerobot" and metadata["data"]["source"] == "so100-pick"
    assert metadata["data"]["reward"] == {"kind": "sparse", "scale": 1.0, "shift": 0.0}
    assert metadata["action_names"] == ["joint_0", "joint_1", "joint_2"]
    assert metadata["observation_keys"] == ["observation.state", "observation.environment_state"]
    with running_server(tmp_path / "repository") as url:
        answer = httpx.post(
            f"{url}/v1/models/so100-pick/act", json={"observation": [0.1] * 8, "seed": 0}
        ).json()
        assert np.asarray(answer["action"]).shape == (4, 3)
        described = httpx.get(f"{url}/v1/models/so100-pick").json()
        assert described["control_period_s"] == pytest.approx(0.05) and described["obs_dim"] == 8


def test_actions_outside_the_unit_box_are_scaled_and_served_in_the_data_units(tmp_path):
    episodes = synthetic_episodes(episodes=4, length=20)
    for episode in episodes:
        episode["action"] = episode["action"] * 90.0 + 10.0  # joint targets in degrees
    folder = write_lerobot(tmp_path / "degrees", episodes, "v2.1")
    run = tmp_path / "run"
    assert train_main(["--dataset", str(folder), "--out", str(run), *TINY, "--steps", "10"]) == 0
    bundle = tmp_path / "bundle"
    assert export_main([str(run), "--out", str(bundle), "--name", "degrees"]) == 0
    metadata = json.loads((bundle / "metadata.json").read_text())
    actions = np.concatenate([e["action"] for e in episodes])
    np.testing.assert_allclose(metadata["action_low"], actions.min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(metadata["action_high"], actions.max(axis=0), rtol=1e-6)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(bundle / "policy.onnx"))
    noise = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    action, _, candidates = session.run(None, {"observation": np.zeros((2, 8), np.float32), "noise": noise})
    assert (candidates >= actions.min(axis=0) - 1e-3).all() and (
        candidates <= actions.max(axis=0) + 1e-3
    ).all()
    assert np.abs(action).max() > 1.5  # in degrees, not the policy's [-1, 1]


def test_a_bad_source_fails_in_one_line_and_keeps_the_run_it_would_replace(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    folder = write_lerobot(
        tmp_path / "no-rewards", synthetic_episodes(), columns=("observation.state", "next.done")
    )
    assert (
        train_main(["--dataset", str(folder), "--out", str(run), "--overwrite", *TINY, "--steps", "5"]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "next.reward" in error
    assert (run / "notes.txt").read_text() == "keep me"
    assert data_main(["info", "--dataset", str(tmp_path / "missing-folder")]) == 2
    assert "no such folder or file" in capsys.readouterr().err


def test_data_info_describes_a_lerobot_source(tmp_path, capsys):
    folder = write_lerobot(tmp_path / "set", synthetic_episodes(episodes=2, length=10))
    assert data_main(["info", "--dataset", str(folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["format"] == "lerobot"
        and info["episodes"] == 2
        and info["control_period_s"] == pytest.approx(0.05)
    )
    assert info["eval_env"] is None and info["success_transition_fraction"] > 0


def test_the_minari_demonstration_of_docs_datasets_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """docs/datasets.md's collection snippet, then train -> evaluate in the stored env -> export."""
    import re

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    docs = (Path(__file__).resolve().parents[2] / "docs/datasets.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", docs, flags=re.DOTALL).group(1)
    exec(compile(snippet, "docs/datasets.md", "exec"), {})  # noqa: S102 - the documented snippet itself
    source = "minari:mfql/inverted-pendulum/noisy-pd-v0"
    run = tmp_path / "pendulum"
    flags = [*TINY[:-2], "--eval-episodes", "2", "--steps", "20", "--eval-every", "20", "--agent", "fql"]
    assert train_main(["--dataset", source, "--out", str(run), *flags]) == 0
    evaluations = (run / "evaluations.csv").read_text().splitlines()
    assert evaluations[1].split(",")[1] == ""  # no success signal: the row has returns only
    capsys.readouterr()
    assert eval_main([str(run), "--episodes", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["success_rate"] is None and report["mean_return"] > 0 and report["env"] == source
    (run / "eval.json").write_text(json.dumps(report))
    bundle = tmp_path / "bundle"
    assert export_main([str(run), "--out", str(bundle), "--evaluation", str(run / "eval.json")]) == 0
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["control_period_s"] == pytest.approx(0.04)  # the env's dt
    assert metadata["action_low"] == [-3.0] and metadata["action_high"] == [3.0]
    assert metadata["evaluation"]["mean_return"] == report["mean_return"]
    assert (
        train_main(["--dataset", source, "--reward", "sparse", "--out", str(tmp_path / "sparse"), *flags])
        == 2
    )
    assert "no success signal" in capsys.readouterr().err
    # The same data as a plain file names no env; --eval-env gives gymnasium's own.
    assert data_main(["convert", "--dataset", source, "--to", str(tmp_path / "pendulum.npz")]) == 0
    plain = tmp_path / "plain"
    gym_flags = [
        "--dataset",
        str(tmp_path / "pendulum.npz"),
        "--eval-env",
        "InvertedPendulum-v5",
        "--out",
        str(plain),
    ]
    assert train_main([*gym_flags, *flags]) == 0
    assert float((plain / "evaluations.csv").read_text().splitlines()[1].split(",")[3]) > 0  # a mean return
