"""Loading OGBench singletask datasets, generated here or official, through ogbench's own code.

The raw files are validated first (validation.py), then handed unchanged to
`ogbench.make_env_and_datasets`, which shifts next_observations within episodes and relabels
rewards r = (#satisfied subtasks - #subtasks) and masks = 1 - success for the task the name
selects. ogbench downloads missing files, which cannot work here, so the files' existence is
checked first and a missing file is reported with the command that generates it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.dataset import (  # noqa: F401 - re-exported: OfflineDataset lived here
    ACTION_CLIP,
    MIN_OBSERVATION_STD,
    OfflineDataset,
    observation_statistics,
)
from training.data.env_families import ENV_FAMILIES
from training.data.errors import DatasetError, DatasetFileNotFoundError
from training.data.npz_files import read_npz
from training.data.task_names import TaskName, generate_command, parse_task_name, validation_path
from training.data.validation import required_keys, validate_raw_arrays


def dataset_paths(env_name: str, dataset_dir: Path) -> tuple[Path, Path]:
    """The train and validation files a singletask name reads, checked to exist."""
    task = parse_task_name(env_name)
    train = Path(dataset_dir).expanduser() / f"{task.dataset_name}.npz"
    val = validation_path(train)
    for path in (train, val):
        if not path.is_file():
            command = generate_command(task, train)
            hint = f"generate it with: {command}" if command else "copy the official OGBench file there"
            raise DatasetFileNotFoundError(f"{path}: dataset file not found (needed by {env_name}); {hint}")
    return train, val


def _validate_file(path: Path, task: TaskName) -> None:
    family = ENV_FAMILIES.get(task.collection_env)
    keys = required_keys(family) if family else ("observations", "actions", "terminals", "qpos")
    validate_raw_arrays(path, read_npz(path), keys)


def _as_offline(split: dict[str, np.ndarray], source: Path) -> OfflineDataset:
    return OfflineDataset(
        observations=np.asarray(split["observations"], dtype=np.float32),
        actions=np.clip(np.asarray(split["actions"], dtype=np.float32), -ACTION_CLIP, ACTION_CLIP),
        rewards=np.asarray(split["rewards"], dtype=np.float32),
        masks=np.asarray(split["masks"], dtype=np.float32),
        terminals=np.asarray(split["terminals"], dtype=np.float32),
        next_observations=np.asarray(split["next_observations"], dtype=np.float32),
        source=str(source),
    )


def load_task_datasets(env_name: str, dataset_dir: Path) -> tuple[OfflineDataset, OfflineDataset]:
    """(train, val) for an OGBench singletask name such as 'cube-single-play-singletask-task2-v0'."""
    import ogbench

    task = parse_task_name(env_name)
    train_path, val_path = dataset_paths(env_name, dataset_dir)
    for path in (train_path, val_path):
        _validate_file(path, task)
    try:
        env, train, val = ogbench.make_env_and_datasets(env_name, dataset_dir=str(train_path.parent))
    except (KeyError, ValueError, IndexError) as error:
        raise DatasetError(
            f"{train_path}: ogbench could not load it ({type(error).__name__}: {error})"
        ) from error
    env.close()
    return _as_offline(train, train_path), _as_offline(val, val_path)


def make_task_env(env_name: str):
    """The evaluation env of a singletask name (OGBench's own construction, no dataset read)."""
    import ogbench

    parse_task_name(env_name)
    return ogbench.make_env_and_datasets(env_name, env_only=True)
