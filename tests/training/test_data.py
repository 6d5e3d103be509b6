"""Datasets: generation with OGBench's oracles, byte reproducibility, loading through ogbench, bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data.cli import main as data_main
from training.data.collection import CollectionConfig
from training.data.errors import DatasetError, DatasetFileNotFoundError, UnknownEnvError
from training.data.generate import generate_dataset
from training.data.ogbench_files import dataset_paths, load_task_datasets, observation_statistics
from training.data.task_names import parse_task_name

TASK = "cube-single-play-singletask-task2-v0"
EPISODE_LENGTH = 60


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    config = CollectionConfig("cube-single-v0", "play", episode_length=EPISODE_LENGTH)
    generate_dataset(config, 3, seed=7, workers=1, out=folder / "cube-single-play-v0.npz", progress=False)
    return folder


def test_task_name_split_matches_ogbench():
    task = parse_task_name(TASK)
    assert task.dataset_name == "cube-single-play-v0"
    assert task.collection_env == "cube-single-v0"
    assert task.task_env == "cube-single-singletask-task2-v0"
    assert parse_task_name("puzzle-3x3-noisy-singletask-v0").task_env == "puzzle-3x3-singletask-v0"
    with pytest.raises(UnknownEnvError, match="singletask"):
        parse_task_name("cube-single-play-v0")


def test_generated_files_have_ogbench_keys_dtypes_and_episode_structure(tiny_dir):
    with (
        np.load(tiny_dir / "cube-single-play-v0.npz") as train,
        np.load(tiny_dir / "cube-single-play-v0-val.npz") as val,
    ):
        assert sorted(train.files) == ["actions", "observations", "qpos", "qvel", "terminals"]
        assert (
            train["observations"].shape == (3 * EPISODE_LENGTH, 28)
            and train["observations"].dtype == np.float32
        )
        assert train["actions"].shape == (3 * EPISODE_LENGTH, 5) and np.abs(train["actions"]).max() <= 1.0
        assert train["terminals"].dtype == bool
        assert np.flatnonzero(train["terminals"]).tolist() == [59, 119, 179]
        assert val["observations"].shape[0] == EPISODE_LENGTH  # max(1, 3 // 10) episodes
        # The oracle moves the arm: consecutive observations differ.
        assert np.abs(np.diff(train["observations"][:EPISODE_LENGTH], axis=0)).sum() > 1.0


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(tiny_dir, tmp_path):
    config = CollectionConfig("cube-single-v0", "play", episode_length=EPISODE_LENGTH)
    generate_dataset(config, 3, seed=7, workers=2, out=tmp_path / "cube-single-play-v0.npz", progress=False)
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = tmp_path / "other" / "cube-single-play-v0.npz"
    generate_dataset(config, 3, seed=8, workers=1, out=other, progress=False)
    assert other.read_bytes() != (tiny_dir / "cube-single-play-v0.npz").read_bytes()


def test_loader_shifts_within_episodes_and_relabels_singletask_rewards(tiny_dir):
    train, val = load_task_datasets(TASK, tiny_dir)
    with np.load(tiny_dir / "cube-single-play-v0.npz") as raw:
        observations = raw["observations"]
    # OGBench drops each episode's last row as a start state: 59 transitions per episode.
    assert train.size == 3 * (EPISODE_LENGTH - 1) and val.size == EPISODE_LENGTH - 1
    assert train.episodes == 3
    np.testing.assert_array_equal(train.observations[:59], observations[:59])
    np.testing.assert_array_equal(train.next_observations[:59], observations[1:60])
    np.testing.assert_array_equal(train.observations[59], observations[60])  # next episode starts
    # cube-single has one subtask: reward is 0 on success and -1 otherwise, mask = 1 - success.
    assert set(np.unique(train.rewards)) <= {-1.0, 0.0}
    np.testing.assert_array_equal(train.masks, -train.rewards)
    mean, std = observation_statistics(train)
    np.testing.assert_allclose(mean, train.observations.mean(0), rtol=1e-5, atol=1e-6)
    assert std.shape == (28,) and (std >= 0).all()


def test_loader_reads_files_written_by_numpy_savez_unchanged(tiny_dir, tmp_path):
    """Official OGBench files are plain np.savez_compressed archives; terminals may be float."""
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        with np.load(tiny_dir / name) as raw:
            arrays = {key: raw[key] for key in raw.files}
        arrays["terminals"] = arrays["terminals"].astype(np.float32)
        np.savez_compressed(tmp_path / name, **arrays)
    ours, _ = load_task_datasets(TASK, tiny_dir)
    theirs, _ = load_task_datasets(TASK, tmp_path)
    np.testing.assert_array_equal(ours.rewards, theirs.rewards)
    np.testing.assert_array_equal(ours.next_observations, theirs.next_observations)


def _corrupt(tiny_dir: Path, tmp_path: Path, edit) -> Path:
    for name in ("cube-single-play-v0.npz", "cube-single-play-v0-val.npz"):
        with np.load(tiny_dir / name) as raw:
            arrays = {key: raw[key].copy() for key in raw.files}
        if not name.endswith("-val.npz"):
            edit(arrays)
        np.savez(tmp_path / name, **arrays)
    return tmp_path


# OGBench's cube-single tasks: task2 moves the cube from (0.35, 0, 0.02) to (0.50, 0, 0.02);
# success is the cube's centre (qpos[14:17]) within 0.04 of the goal.
TASK2_START, TASK2_GOAL = np.array([0.35, 0.0, 0.02]), np.array([0.50, 0.0, 0.02])


def test_relabelling_rewards_and_masks_follow_the_cube_row_by_row(tiny_dir, tmp_path):
    rows = 3 * EPISODE_LENGTH
    # Raw rows whose cube sits on task2's goal (or 0.03 from it: inside the tolerance). Row 59 ends
    # episode 1, so the loader drops it; row 60 starts episode 2.
    on_goal = {5: 0.0, 6: 0.03, 7: 0.0, 58: 0.0, 59: 0.0, 60: 0.0, 150: 0.03}
    near_miss = {8: 0.05, 100: 0.045}  # outside the tolerance

    def build(arrays):
        arrays["qpos"][:, 14:17] = TASK2_START
        for row, offset in {**on_goal, **near_miss}.items():
            arrays["qpos"][row, 14:17] = TASK2_GOAL + np.array([offset, 0.0, 0.0])

    folder = _corrupt(tiny_dir, tmp_path, build)
    success = np.zeros(rows, dtype=bool)
    success[list(on_goal)] = True
    with np.load(folder / "cube-single-play-v0.npz") as raw:
        kept = ~raw["terminals"].astype(bool)  # each episode's last row is only a next state
    expected = success[kept]
    train, _ = load_task_datasets(TASK, folder)
    np.testing.assert_array_equal(train.rewards, np.where(expected, 0.0, -1.0))
    np.testing.assert_array_equal(train.masks, np.where(expected, 0.0, 1.0))
    assert train.rewards.sum() == -(train.size - 6)  # 7 built successes, one on a dropped row
    # Relabelled for task3, whose goal is task2's start, the same states flip.
    moved = np.zeros(rows, dtype=bool)
    moved[list({**on_goal, **near_miss})] = True
    task3, _ = load_task_datasets(TASK.replace("task2", "task3"), folder)
    np.testing.assert_array_equal(task3.rewards, np.where(moved[kept], -1.0, 0.0))
    np.testing.assert_array_equal(task3.masks, np.where(moved[kept], 1.0, 0.0))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.pop("qpos"), r"missing key\(s\) \['qpos'\]"),
        (lambda a: a["observations"].__setitem__((5, 3), np.nan), "NaN/inf in 1 row.*first at row 5"),
        (lambda a: a.__setitem__("actions", a["actions"][:-1]), "'actions' has 179 rows; expected 180"),
        (lambda a: a.__setitem__("actions", a["actions"].astype(str)), "'actions' has dtype <U"),
        (lambda a: a.__setitem__("terminals", a["terminals"][:, None]), "'terminals' has shape"),
        (
            lambda a: a.__setitem__("terminals", a["terminals"] * np.float32(2.0)),
            r"'terminals' holds values \[0.0, 2.0\]; expected only 0 and 1",
        ),
        (
            lambda a: a.__setitem__("terminals", a["terminals"].astype(np.int64) - 1),
            r"'terminals' holds values \[-1, 0\]",
        ),
        (lambda a: a["terminals"].__setitem__(-1, False), "last row has terminal=False; expected 1"),
        (lambda a: a.update({key: value[:0] for key, value in a.items()}), "'observations' has 0 rows"),
    ],
    ids=[
        "missing-key",
        "nan",
        "lengths",
        "dtype",
        "shape",
        "terminal-2",
        "terminal-minus-1",
        "last-row",
        "empty",
    ],
)
def test_malformed_file_names_the_file_and_the_problem(tiny_dir, tmp_path, edit, message):
    folder = _corrupt(tiny_dir, tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as raised:
        load_task_datasets(TASK, folder)
    assert str(folder / "cube-single-play-v0.npz") in str(raised.value)


def test_missing_file_says_how_to_generate_it_and_downloads_nothing(tmp_path):
    with pytest.raises(DatasetFileNotFoundError, match="mfql-data generate --env cube-single-v0 --type play"):
        dataset_paths(TASK, tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "cube-single-play-v0.npz").write_bytes(b"not a zip")
    (tmp_path / "cube-single-play-v0-val.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_task_datasets(TASK, tmp_path)


def test_info_cli_reports_sizes_and_task_statistics(tiny_dir, capsys):
    assert data_main(["info", str(tiny_dir / "cube-single-play-v0.npz"), "--tasks", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["rows"] == 180 and info["transitions"] == 177
    assert info["obs_dim"] == 28 and info["action_dim"] == 5
    assert info["episode_length"] == {"min": 60, "max": 60, "mean": 60.0}
    task = info["tasks"]["task2"]
    assert task["env"] == "cube-single-singletask-task2-v0"
    assert -1.0 <= task["mean_reward"] <= 0.0 and 0.0 <= task["success_state_fraction"] <= 1.0


def test_generate_cli_refuses_to_overwrite_and_rejects_unknown_env(tiny_dir, capsys):
    out = tiny_dir / "cube-single-play-v0.npz"
    before = out.read_bytes()
    assert data_main(["generate", "--env", "cube-single-v0", "--episodes", "1", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    code = subprocess.run(
        [sys.executable, "-m", "training.data.cli", "generate", "--env", "cube-nine-v0", "--out", "x.npz"],
        capture_output=True,
        text=True,
    )
    assert code.returncode == 2 and "unknown data-collection env 'cube-nine-v0'" in code.stderr
