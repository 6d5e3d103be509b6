"""OGBench names: a singletask name splits into dataset, collection env and evaluation env.

The split follows `ogbench.utils.make_env_and_datasets`: in
'cube-single-play-singletask-task2-v0' the token before 'singletask' is the dataset type,
the files are 'cube-single-play-v0(.npz|-val.npz)' and the evaluation env is
'cube-single-singletask-task2-v0'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.data.env_families import DATASET_TYPES, ENV_FAMILIES
from training.data.errors import UnknownEnvError

OFFICIAL_EPISODES = 1000  # OGBench's num_episodes for the manipulation datasets


@dataclass(frozen=True)
class TaskName:
    name: str  # 'cube-single-play-singletask-task2-v0'
    dataset_name: str  # 'cube-single-play-v0': stem of the train file
    collection_env: str  # 'cube-single-v0': env the data was collected in
    dataset_type: str  # 'play'
    task_env: str  # 'cube-single-singletask-task2-v0': the evaluation env id


def parse_task_name(name: str) -> TaskName:
    tokens = name.split("-")
    if "singletask" not in tokens or tokens.index("singletask") < 2 or not tokens[-1].startswith("v"):
        raise UnknownEnvError(
            f"{name!r} is not an OGBench singletask name: expected "
            "'<env>-<dataset type>-singletask[-task<K>]-v<N>', e.g. 'cube-single-play-singletask-task2-v0'"
        )
    pos = tokens.index("singletask")
    return TaskName(
        name=name,
        dataset_name="-".join(tokens[:pos] + tokens[-1:]),
        collection_env="-".join(tokens[: pos - 1] + tokens[-1:]),
        dataset_type=tokens[pos - 1],
        task_env="-".join(tokens[: pos - 1] + tokens[pos:]),
    )


def validation_path(train_path: Path) -> Path:
    """'<dir>/<dataset>.npz' -> '<dir>/<dataset>-val.npz', OGBench's naming of the validation split."""
    if train_path.suffix != ".npz":
        raise ValueError(f"dataset path must end in '.npz'; got {str(train_path)!r}")
    return train_path.with_name(f"{train_path.stem}-val.npz")


def generate_command(task: TaskName, train_path: Path) -> str | None:
    """The `mfql-data generate` call that writes `train_path` and its -val split; None if unsupported."""
    if task.collection_env not in ENV_FAMILIES or task.dataset_type not in DATASET_TYPES:
        return None
    return (
        f"mfql-data generate --env {task.collection_env} --type {task.dataset_type} "
        f"--episodes {OFFICIAL_EPISODES} --out {train_path}"
    )
