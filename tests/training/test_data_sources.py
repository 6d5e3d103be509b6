"""`--dataset SOURCE`: LeRobot folders, Minari datasets and transitions files load to the same
in-memory dataset as OGBench files, with episode boundaries, reward conventions and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.training.lerobot_folders import synthetic_episodes, write_lerobot
from training.data.dataset import content_sha256, split_episodes
from training.data.errors import DatasetError
from training.data.lerobot_files import read_lerobot
from training.data.rewards import RewardConfig
from training.data.sources import DataConfig, load_training_data, source_format
from training.data.transitions_files import read_transitions, write_transitions
from training.replay_buffer import chunk_starts

TASK = "cube-single-play-singletask-task2-v0"


@pytest.fixture
def minari_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_a_lerobot_folder_reads_as_transitions_of_consecutive_frames(tmp_path, version):
    episodes = synthetic_episodes(episodes=4, length=30)
    read = read_lerobot(write_lerobot(tmp_path / "set", episodes, version, shuffle_rows=version == "v3.0"))
    data = read.dataset
    assert read.observation_keys == ("observation.state", "observation.environment_state")
    assert read.fps == 20.0 and read.action_names == ["joint_0", "joint_1", "joint_2"]
    # Episodes 0 and 2 succeed on their last frame (kept, mask 0); 1 and 3 end by time (their last
    # frame has no next observation, so it is dropped): 30 + 29 + 30 + 29 rows.
    assert np.flatnonzero(data.terminals).tolist() == [29, 58, 88, 117]
    first = episodes[0]
    state = first["observation.state"]
    np.testing.assert_array_equal(data.observations[:30, :6], state)
    np.testing.assert_array_equal(data.next_observations[:29, :6], state[1:])
    np.testing.assert_array_equal(data.observations[:30, 6:], first["observation.environment_state"])
    np.testing.assert_array_equal(data.actions[:30], np.clip(first["action"], -1 + 1e-5, 1 - 1e-5))
    assert data.masks[29] == 0 and data.masks[:29].min() == 1 and data.success_flags.sum() == 2
    assert data.rewards[29] == 1.0 and data.rewards[:29].max() == 0.0


def test_lerobot_v2_1_and_v3_0_of_the_same_frames_load_to_the_same_arrays(tmp_path):
    episodes = synthetic_episodes()
    new = read_lerobot(write_lerobot(tmp_path / "v3", episodes, "v3.0", shuffle_rows=True)).dataset
    old = read_lerobot(write_lerobot(tmp_path / "v2", episodes, "v2.1")).dataset
    assert content_sha256(new) == content_sha256(old)


def test_observation_keys_choose_and_order_the_features(tmp_path):
    folder = write_lerobot(tmp_path / "set", synthetic_episodes())
    read = read_lerobot(folder, ("observation.environment_state",))
    assert read.dataset.obs_dim == 2


def test_action_chunks_never_cross_a_lerobot_episode_boundary(tmp_path):
    data = read_lerobot(write_lerobot(tmp_path / "set", synthetic_episodes(episodes=3, length=12))).dataset
    import torch

    starts = chunk_starts(torch.as_tensor(data.terminals > 0), 5).numpy()
    ends = np.flatnonzero(data.terminals)
    for start in starts:
        assert not any(start <= end < start + 4 for end in ends)
    assert len(starts) == data.size - 3 * 4


def _lerobot_error(tmp_path, **change) -> str:
    folder = tmp_path / "bad"
    shutil.rmtree(folder, ignore_errors=True)
    episodes = change.pop("episodes", None) or synthetic_episodes()
    write_lerobot(folder, episodes, **change)
    with pytest.raises(DatasetError) as error:
        read_lerobot(folder)
    return str(error.value)


def test_lerobot_without_rewards_is_refused_with_how_to_add_them(tmp_path):
    message = _lerobot_error(tmp_path, columns=("observation.state", "next.done"))
    assert (
        "meta/info.json" in message and "'next.reward'" in message and "Offline RL needs a reward" in message
    )


def test_lerobot_nan_names_the_field(tmp_path):
    episodes = synthetic_episodes()
    episodes[1]["observation.state"][3, 2] = np.nan
    message = _lerobot_error(tmp_path, episodes=episodes)
    assert "'observations'" in message and "NaN" in message and "bad" in message


def test_lerobot_episode_lengths_that_disagree_name_the_metadata_file(tmp_path):
    folder = write_lerobot(tmp_path / "set", synthetic_episodes(), "v2.1")
    lines = (folder / "meta/episodes.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["length"] += 3
    lines[2] = json.dumps(record)
    (folder / "meta/episodes.jsonl").write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=r"episodes\.jsonl: episode 2 has 'length' 33 but 30 frames"):
        read_lerobot(folder)


def test_lerobot_image_features_are_refused_when_asked_for_or_alone(tmp_path):
    folder = write_lerobot(tmp_path / "set", synthetic_episodes(), images=True)
    assert read_lerobot(folder).dataset.obs_dim == 8  # by default the vector features only
    with pytest.raises(DatasetError, match="'observation.images.top' is an video.*does not take image"):
        read_lerobot(folder, ("observation.state", "observation.images.top"))
    info = json.loads((folder / "meta/info.json").read_text())
    for key in ("observation.state", "observation.environment_state"):
        del info["features"][key]
    (folder / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"only image features \['observation.images.top'\]"):
        read_lerobot(folder)


def test_a_folder_that_is_not_a_lerobot_dataset_is_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a LeRobot dataset"):
        source_format(str(tmp_path / "plain"))
    (tmp_path / "plain/meta").mkdir()
    (tmp_path / "plain/meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"info\.json: not valid JSON"):
        read_lerobot(tmp_path / "plain")


def test_an_unknown_minari_id_names_the_download_command(minari_root):
    with pytest.raises(DatasetError, match="minari download D4RL/door/cloned-v2"):
        load_training_data("x", "data", DataConfig(source="minari:D4RL/door/cloned-v2"))


def _write_minari_dict_dataset(dataset_id: str, episodes: int = 3, steps: int = 12):
    """A Minari dataset with Dict observations and infos['success'], written by minari's own API."""
    import gymnasium
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    space = gymnasium.spaces.Dict(
        {
            "observation": gymnasium.spaces.Box(-10, 10, (4,), np.float32),
            "desired_goal": gymnasium.spaces.Box(-10, 10, (2,), np.float32),
        }
    )
    rng = np.random.default_rng(0)
    buffers = []
    for number in range(episodes):
        success = np.zeros(steps, dtype=bool)
        success[-3:] = number == 0
        buffers.append(
            EpisodeBuffer(
                id=number,
                observations={
                    "observation": rng.normal(size=(steps + 1, 4)).astype(np.float32),
                    "desired_goal": np.full((steps + 1, 2), number, np.float32),
                },
                actions=rng.uniform(-2, 2, (steps, 2)).astype(np.float32),
                rewards=success.astype(np.float32),
                terminations=np.zeros(steps, dtype=bool),
                truncations=np.arange(steps) == steps - 1,
                infos={"success": np.concatenate([[False], success])},
            )
        )
    return minari.create_dataset_from_buffers(
        dataset_id,
        buffers,
        observation_space=space,
        action_space=gymnasium.spaces.Box(-2, 2, (2,), np.float32),
        author="mfql tests",
        author_email="tests@example.com",
    )


def test_a_minari_dict_dataset_flattens_its_keys_and_reads_success_from_infos(minari_root):
    _write_minari_dict_dataset("tests/goals-v0")
    loaded = load_training_data("x", "data", DataConfig(source="minari:tests/goals-v0", val_fraction=0.0))
    data = loaded.train
    assert loaded.provenance["observation_keys"] == ["desired_goal", "observation"]
    assert data.obs_dim == 6 and data.size == 36 and data.episodes == 3
    np.testing.assert_array_equal(data.observations[12:24, :2], 1.0)  # episode 1's goal comes first
    assert data.success_flags[:12].tolist() == [0.0] * 9 + [1.0] * 3 and data.success_flags[12:].sum() == 0
    assert data.masks.min() == 1.0  # never terminated: success does not end the value here
    # Actions in [-2, 2] are mapped to [-1, 1] with the data's range, recorded for the bundle.
    assert data.actions.min() >= -1 and data.actions.max() <= 1
    assert len(loaded.provenance["action_low"]) == 2 and loaded.eval_env is None
    sparse = load_training_data(
        "x",
        "data",
        DataConfig(source="minari:tests/goals-v0", val_fraction=0.0, reward=RewardConfig("sparse")),
    )
    np.testing.assert_array_equal(sparse.train.rewards, data.success_flags - 1.0)


def test_a_transitions_file_round_trips_and_defaults_next_observations(tmp_path):
    rng = np.random.default_rng(1)
    rows = 20
    arrays = {
        "observations": rng.normal(size=(rows, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (rows, 2)).astype(np.float32),
        "rewards": rng.normal(size=rows).astype(np.float32),
        "terminals": (np.arange(rows) % 10 == 9).astype(np.float32),
    }
    np.savez(tmp_path / "plain.npz", **arrays)
    data = read_transitions(tmp_path / "plain.npz")
    # No next_observations: each episode's last row has none and its mask (1 - terminals) is 0, so it stays.
    assert data.size == rows and np.flatnonzero(data.terminals).tolist() == [9, 19]
    np.testing.assert_array_equal(data.next_observations[:9], arrays["observations"][1:10])
    assert data.masks[9] == 0
    for name in ("again.npz", "again.h5"):
        write_transitions(data, tmp_path / name)
        assert content_sha256(read_transitions(tmp_path / name)) == content_sha256(data)


def test_a_transitions_file_without_rewards_names_the_missing_arrays(tmp_path):
    np.savez(tmp_path / "bad.npz", observations=np.zeros((4, 2)), actions=np.zeros((4, 1)))
    with pytest.raises(DatasetError, match=r"bad\.npz: missing array\(s\) \['rewards', 'terminals'\]"):
        read_transitions(tmp_path / "bad.npz")


def test_sparse_reward_on_ogbench_data_is_q_chunkings(two_episode_data_dir):
    dense = load_training_data(TASK, two_episode_data_dir, DataConfig()).train
    sparse = load_training_data(TASK, two_episode_data_dir, DataConfig(reward=RewardConfig("sparse"))).train
    np.testing.assert_array_equal(sparse.rewards, (dense.rewards != 0) * -1.0)  # QC main.py's line
    shifted = load_training_data(
        TASK, two_episode_data_dir, DataConfig(reward=RewardConfig(scale=2.0, shift=-1.0))
    )
    np.testing.assert_array_equal(shifted.train.rewards, 2.0 * dense.rewards - 1.0)
    assert shifted.provenance["reward"] == {"kind": "dataset", "scale": 2.0, "shift": -1.0}


def test_held_out_episodes_are_whole_and_last(tmp_path):
    data = read_lerobot(write_lerobot(tmp_path / "set", synthetic_episodes(episodes=10, length=10))).dataset
    train, val = split_episodes(data, 0.2)
    assert train.episodes == 8 and val.episodes == 2 and train.size + val.size == data.size
    assert train.terminals[-1] == 1 and val.terminals[-1] == 1
