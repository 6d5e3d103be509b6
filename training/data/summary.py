"""What `mfql-data info` reports about one OGBench-format file: sizes, dims, episodes, rewards."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from training.data.env_families import ENV_FAMILIES
from training.data.lights_out import fewest_presses, puzzle_grid
from training.data.npz_files import read_npz
from training.data.validation import CORE_KEYS, validate_raw_arrays

SINGLETASK_IDS = (1, 2, 3, 4, 5)  # OGBench's manipulation envs define five evaluation tasks each


def collection_env_of(path: Path) -> str | None:
    """'cube-single-play-v0.npz' (or '-val.npz') -> 'cube-single-v0' when the family is known."""
    match = re.fullmatch(r"(.+)-(play|noisy|stitch|explore|navigate)-(v\d+)(-val)?\.npz", path.name)
    if not match:
        return None
    env = f"{match.group(1)}-{match.group(3)}"
    return env if env in ENV_FAMILIES else None


def file_summary(path: Path) -> dict:
    """Raw facts: rows, episodes, dims, keys with dtypes and shapes, action range."""
    arrays = read_npz(path)
    validate_raw_arrays(path, arrays, CORE_KEYS)
    terminals = arrays["terminals"].astype(bool)
    ends = np.flatnonzero(terminals)
    lengths = np.diff(np.concatenate([[-1], ends]))
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "rows": int(len(terminals)),
        "transitions": int(len(terminals) - terminals.sum()),
        "episodes": int(terminals.sum()),
        "episode_length": {
            "min": int(lengths.min()),
            "max": int(lengths.max()),
            "mean": float(lengths.mean()),
        },
        "obs_dim": int(arrays["observations"].shape[1]),
        "action_dim": int(arrays["actions"].shape[1]),
        "action_range": [float(arrays["actions"].min()), float(arrays["actions"].max())],
        "keys": {
            key: {"dtype": str(value.dtype), "shape": list(value.shape)} for key, value in arrays.items()
        },
    }


def task_statistics(path: Path, collection_env: str, task_ids=SINGLETASK_IDS) -> dict:
    """Per singletask: mean reward, fraction of successful states and of episodes that reach success.

    Uses ogbench's own loader and relabelling, exactly what training sees. Puzzle tasks also
    get how far the start is from the goal: lights that differ, and the fewest presses.
    """
    import gymnasium
    import ogbench.manipspace  # noqa: F401  (registers the env ids)
    from ogbench.relabel_utils import relabel_dataset
    from ogbench.utils import load_dataset

    dataset = load_dataset(str(path), add_info=True)
    episode_index = np.concatenate([[0], np.cumsum(dataset["terminals"][:-1])]).astype(int)
    stem = collection_env.rsplit("-", 1)
    result = {}
    for task_id in task_ids:
        name = f"{stem[0]}-singletask-task{task_id}-{stem[1]}"
        env = gymnasium.make(name)
        relabel_dataset(name, env, dataset)
        task_info = env.unwrapped.task_infos[task_id - 1]
        env.close()
        success = dataset["masks"] == 0.0
        result[f"task{task_id}"] = {
            "env": name,
            "mean_reward": float(dataset["rewards"].mean()),
            "success_state_fraction": float(success.mean()),
            "success_episode_fraction": float(
                np.bincount(episode_index, weights=success).astype(bool).mean()
            ),
            **puzzle_task_distance(collection_env, task_info),
        }
    return result


def puzzle_task_distance(collection_env: str, task_info: dict) -> dict:
    """{'lights_wrong_at_start', 'fewest_presses'} for a puzzle task's info; {} for other envs."""
    grid = puzzle_grid(collection_env)
    if grid is None:
        return {}
    start, goal = task_info["init_button_states"], task_info["goal_button_states"]
    return {
        "lights_wrong_at_start": int((np.asarray(start) != np.asarray(goal)).sum()),
        "fewest_presses": fewest_presses(start, goal, *grid),
    }
