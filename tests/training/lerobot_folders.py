"""LeRobot dataset folders written by the tests, following the format (v3.0 and v2.1).

The fields of info.json are those of public LeRobot datasets (codebase_version, robot_type,
total_episodes, total_frames, total_tasks, chunks_size, fps, splits, data_path, video_path,
features with dtype / shape / names); the parquet columns carry the features' dtypes: float32
lists for vectors, scalars for next.reward (float32), next.done / next.success (bool) and the
int64 indices.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 20


def _feature(dtype: str, shape: list[int], names=None) -> dict:
    return {"dtype": dtype, "shape": shape, "names": names}


def synthetic_episodes(
    episodes: int = 4, length: int = 30, state_dim: int = 6, action_dim: int = 3, seed: int = 0
):
    """Per-episode dicts of frames: a state drifting with the action, success on the last frame of even episodes."""
    rng = np.random.default_rng(seed)
    out = []
    for number in range(episodes):
        states = np.cumsum(rng.normal(0, 0.1, (length, state_dim)), axis=0).astype(np.float32)
        actions = np.tanh(rng.normal(0, 0.5, (length, action_dim))).astype(np.float32)
        success = np.zeros(length, dtype=bool)
        if number % 2 == 0:
            success[-1] = True
        out.append(
            {
                "observation.state": states,
                "observation.environment_state": states[:, :2] * 2.0,
                "action": actions,
                "next.reward": success.astype(np.float32),
                "next.done": np.arange(length) == length - 1,
                "next.success": success,
            }
        )
    return out


def _info(version: str, episodes: list[dict], columns: list[str], images: bool) -> dict:
    first = episodes[0]
    features = {
        "action": _feature(
            "float32", [first["action"].shape[1]], [f"joint_{i}" for i in range(first["action"].shape[1])]
        ),
        "episode_index": _feature("int64", [1]),
        "frame_index": _feature("int64", [1]),
        "timestamp": _feature("float32", [1]),
        "index": _feature("int64", [1]),
        "task_index": _feature("int64", [1]),
    }
    for key in columns:
        if key.startswith("observation."):
            features[key] = _feature(
                "float32", [first[key].shape[1]], [f"{key}_{i}" for i in range(first[key].shape[1])]
            )
        elif key == "next.reward":
            features[key] = _feature("float32", [1])
        elif key in ("next.done", "next.success"):
            features[key] = _feature("bool", [1])
    if images:
        features["observation.images.top"] = {
            "dtype": "video",
            "shape": [96, 128, 3],
            "names": ["height", "width", "channels"],
            "info": {"video.fps": FPS, "video.codec": "av1"},
        }
    total = sum(len(e["action"]) for e in episodes)
    info = {
        "codebase_version": version,
        "robot_type": "so100",
        "total_episodes": len(episodes),
        "total_frames": total,
        "total_tasks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{len(episodes)}"},
        "features": features,
    }
    if version == "v3.0":
        info["data_path"] = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        info["video_path"] = (
            "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if images else None
        )
        info["data_files_size_in_mb"] = 100
    else:
        info["data_path"] = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        info["video_path"] = None
        info["total_chunks"] = 1
        info["total_videos"] = 0
    return info


def _table(episodes: list[dict], columns: list[str], first_index: int, first_episode: int) -> pa.Table:
    data: dict[str, pa.Array] = {}
    lengths = [len(e["action"]) for e in episodes]
    for key in ["action", *columns]:
        values = np.concatenate([e[key] for e in episodes])
        if values.ndim == 2:
            data[key] = pa.array(list(values), type=pa.list_(pa.float32()))
        else:
            data[key] = pa.array(values)
    data["episode_index"] = pa.array(
        np.repeat(np.arange(first_episode, first_episode + len(episodes)), lengths), pa.int64()
    )
    data["frame_index"] = pa.array(np.concatenate([np.arange(n) for n in lengths]), pa.int64())
    data["timestamp"] = pa.array(np.concatenate([np.arange(n) / FPS for n in lengths]).astype(np.float32))
    data["index"] = pa.array(np.arange(first_index, first_index + sum(lengths)), pa.int64())
    data["task_index"] = pa.array(np.zeros(sum(lengths), dtype=np.int64))
    return pa.table(data)


def write_lerobot(
    folder: Path,
    episodes: list[dict],
    version: str = "v3.0",
    columns: tuple[str, ...] = (
        "observation.state",
        "observation.environment_state",
        "next.reward",
        "next.done",
        "next.success",
    ),
    images: bool = False,
    shuffle_rows: bool = False,
) -> Path:
    """Write `episodes` as a LeRobot dataset of `version`; `shuffle_rows` stores v3.0 rows out of order."""
    folder = Path(folder)
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    columns = list(columns)
    (folder / "meta/info.json").write_text(json.dumps(_info(version, episodes, columns, images), indent=4))
    lengths = [len(e["action"]) for e in episodes]
    if version == "v3.0":
        table = _table(episodes, columns, 0, 0)
        if shuffle_rows:
            table = table.take(np.random.default_rng(0).permutation(table.num_rows))
        (folder / "data/chunk-000").mkdir(parents=True)
        pq.write_table(table, folder / "data/chunk-000/file-000.parquet")
        ends = np.cumsum(lengths)
        meta = pa.table(
            {
                "episode_index": pa.array(np.arange(len(episodes)), pa.int64()),
                "length": pa.array(lengths, pa.int64()),
                "tasks": pa.array([["pick the cube"]] * len(episodes)),
                "dataset_from_index": pa.array(ends - lengths, pa.int64()),
                "dataset_to_index": pa.array(ends, pa.int64()),
                "data/chunk_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
                "data/file_index": pa.array(np.zeros(len(episodes), dtype=np.int64)),
            }
        )
        (folder / "meta/episodes/chunk-000").mkdir(parents=True)
        pq.write_table(meta, folder / "meta/episodes/chunk-000/file-000.parquet")
    else:
        (folder / "data/chunk-000").mkdir(parents=True)
        index = 0
        for number, episode in enumerate(episodes):
            pq.write_table(
                _table([episode], columns, index, number),
                folder / f"data/chunk-000/episode_{number:06d}.parquet",
            )
            index += lengths[number]
        records = [
            json.dumps({"episode_index": number, "tasks": ["pick the cube"], "length": length})
            for number, length in enumerate(lengths)
        ]
        (folder / "meta/episodes.jsonl").write_text("\n".join(records) + "\n")
    return folder
