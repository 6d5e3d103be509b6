"""`--dataset SOURCE`: where training data comes from, and the one in-memory form every source yields.

SOURCE is one of
- an OGBench singletask name (files in `--dataset-dir`; the default, read by ogbench's loader);
- `minari:<dataset id>` (a local Minari dataset, e.g. `minari:D4RL/antmaze/large-play-v1`);
- a LeRobot dataset folder (v2.1 or v3.0: it has `meta/info.json`);
- a transitions file (`.npz`, `.h5`, `.hdf5`; docs/datasets.md).

OGBench data keeps its own validation file; the other sources hold out their last episodes
(`val_fraction`). The reward convention (training/data/rewards.py) is applied to both splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from training.data.dataset import (
    OfflineDataset,
    action_bounds,
    clip_actions,
    content_sha256,
    scale_actions,
    split_episodes,
)
from training.data.errors import DatasetError
from training.data.lerobot_files import is_lerobot_folder
from training.data.minari_files import PREFIX as MINARI_PREFIX
from training.data.rewards import RewardConfig
from training.data.transitions_files import is_transitions_file

SourceFormat = Literal["ogbench", "minari", "lerobot", "transitions"]
# How actions reach the policy's [-1, 1]: as they are (refused if outside), mapped from the
# data's per-dimension [min, max] (the bundle then maps back, so served actions are in the
# data's units), or auto: mapped only when some action leaves [-1, 1].
ActionScaling = Literal["auto", "none", "minmax"]
ACTION_SCALINGS: tuple[str, ...] = ("auto", "none", "minmax")
# What the networks see of an observation: (s - mean) / std with the training split's statistics
# (ALGORITHM.md and the MeanFlowQL authors' code), or s as it is (Q-chunking's code on OGBench; a
# study option: docs/method.md, "Observation normalisation").
ObservationNormalization = Literal["mean-std", "none"]
OBSERVATION_NORMALIZATIONS: tuple[str, ...] = ("mean-std", "none")


@dataclass(frozen=True)
class DataConfig:
    """What a run trains on beyond the OGBench name; recorded in checkpoints and bundles."""

    source: str | None = None  # None: the OGBench singletask name `env_name` in `dataset_dir`
    observation_keys: tuple[str, ...] | None = None  # LeRobot features / Minari Dict keys (None: defaults)
    val_fraction: float = 0.1  # share of episodes held out where the source has no validation split
    reward: RewardConfig = field(default_factory=RewardConfig)  # reward convention, for every split
    action_scaling: ActionScaling = "auto"  # actions to [-1, 1]: auto, none or minmax (see above)
    observation_normalization: ObservationNormalization = "mean-std"  # or none (see above)

    def __post_init__(self) -> None:
        if self.observation_normalization not in OBSERVATION_NORMALIZATIONS:
            raise ValueError(
                f"observation_normalization must be one of {list(OBSERVATION_NORMALIZATIONS)}; "
                f"got {self.observation_normalization!r}"
            )
        if self.action_scaling not in ACTION_SCALINGS:
            raise ValueError(
                f"action_scaling must be one of {list(ACTION_SCALINGS)}; got {self.action_scaling!r}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be in [0, 1) (0: no held-out episodes); got {self.val_fraction}"
            )


@dataclass(frozen=True)
class LoadedData:
    train: OfflineDataset
    val: OfflineDataset | None  # None: nothing held out (val_fraction 0)
    provenance: dict  # format, source, content hash, keys, names, control period (bundle metadata)
    eval_env: str | None  # the env the data names and evaluation can build (None: offline only)


def is_ogbench_name(source: str) -> bool:
    return "singletask" in source.split("-") and "/" not in source and not is_transitions_file(Path(source))


def source_format(source: str) -> SourceFormat:
    """Which reader a SOURCE string names; a clear error for anything else."""
    if source.startswith(MINARI_PREFIX):
        if not source[len(MINARI_PREFIX) :]:
            raise DatasetError("minari: needs a dataset id, e.g. minari:D4RL/antmaze/large-play-v1")
        return "minari"
    path = Path(source).expanduser()
    if is_transitions_file(path):
        return "transitions"
    if path.is_dir():
        if is_lerobot_folder(path):
            return "lerobot"
        raise DatasetError(
            f"{path}: not a LeRobot dataset (no meta/info.json) and not a transitions file; expected "
            "an OGBench singletask name, minari:<id>, a LeRobot folder or a .npz/.h5 file"
        )
    if is_ogbench_name(source):
        return "ogbench"
    raise DatasetError(
        f"{source!r}: no such folder or file, and not an OGBench singletask name or minari:<id>; expected one of "
        "'cube-single-play-singletask-task2-v0', 'minari:D4RL/antmaze/large-play-v1', a LeRobot folder, data.npz"
    )


def dataset_name(source: str) -> str:
    """A short name for runs and bundles: the Minari id, the folder's or file's name."""
    kind = source_format(source)
    if kind == "minari":
        return source[len(MINARI_PREFIX) :]
    if kind == "ogbench":
        return source
    path = Path(source).expanduser().resolve()
    return path.name if kind == "lerobot" else path.stem


def _provenance(kind: SourceFormat, source: str, dataset: OfflineDataset, **facts) -> dict:
    return {
        "format": kind,
        "source": source,
        "content_sha256": content_sha256(dataset),
        "transitions": dataset.size,
        "episodes": dataset.episodes,
        "obs_dim": dataset.obs_dim,
        "action_dim": dataset.action_dim,
        "observation_keys": None,
        "action_names": None,
        "control_period_s": None,
        **facts,
    }


def _split(dataset: OfflineDataset, val_fraction: float) -> tuple[OfflineDataset, OfflineDataset | None]:
    return (dataset, None) if val_fraction == 0 else split_episodes(dataset, val_fraction)


def _read(kind: SourceFormat, source: str, dataset_dir: Path, data: DataConfig):
    """(train, val, provenance, eval env) before the reward transform."""
    if kind == "ogbench":
        from training.data.ogbench_files import dataset_paths, load_task_datasets

        train, val = load_task_datasets(source, dataset_dir)
        train_path, _ = dataset_paths(source, dataset_dir)
        return train, val, _provenance(kind, str(train_path.name), train), source
    if kind == "minari":
        from training.data.minari_files import read_minari

        read = read_minari(source[len(MINARI_PREFIX) :], data.observation_keys)
        train, val = _split(read.dataset, data.val_fraction)
        keys = list(read.observation_keys) if read.observation_keys else None
        facts = {"observation_keys": keys, "env_spec": read.env_spec, "has_success": read.has_success}
        return train, val, _provenance(kind, source, read.dataset, **facts), source if read.env_spec else None
    if kind == "lerobot":
        from training.data.lerobot_files import read_lerobot

        read = read_lerobot(Path(source), data.observation_keys)
        train, val = _split(read.dataset, data.val_fraction)
        facts = {
            "observation_keys": list(read.observation_keys),
            "action_names": read.action_names,
            "control_period_s": 1.0 / read.fps if read.fps else None,
            "fps": read.fps,
            "lerobot_version": read.version,
        }
        name = Path(source).expanduser().resolve().name  # the folder by name: paths mean nothing elsewhere
        return train, val, _provenance(kind, name, read.dataset, **facts), None
    from training.data.transitions_files import read_transitions

    dataset = read_transitions(Path(source))
    train, val = _split(dataset, data.val_fraction)
    return train, val, _provenance(kind, Path(source).name, dataset), None


def _scaled_actions(train, val, scaling: str, provenance: dict):
    """Both splits' actions in [-1, 1]; the bounds used (all the data's) go in the provenance."""
    splits = [train] if val is None else [train, val]
    outside = max(float(abs(split.actions).max()) for split in splits) > 1.0 + 1e-3
    if scaling == "minmax" or (scaling == "auto" and outside):
        low, high = action_bounds(*splits)
        provenance["action_low"], provenance["action_high"] = low.tolist(), high.tolist()
        return scale_actions(train, low, high), None if val is None else scale_actions(val, low, high)
    return clip_actions(train), None if val is None else clip_actions(val)


def read_source(
    source: str, dataset_dir: Path | str, observation_keys: tuple[str, ...] | None = None
) -> LoadedData:
    """The source's transitions as stored, for `mfql-data info` and `convert`: no held-out split,
    the source's rewards and its actions unscaled (a conversion must not change the data)."""
    kind = source_format(source)
    data = DataConfig(
        source=None if kind == "ogbench" else source, observation_keys=observation_keys, val_fraction=0.0
    )
    return LoadedData(*_read(kind, source, Path(dataset_dir), data))


def load_training_data(env_name: str, dataset_dir: Path | str, data: DataConfig) -> LoadedData:
    """The run's data: (train, val) in mfql's form, its provenance, and the env it names (if any)."""
    source = data.source or env_name
    kind = source_format(source)
    train, val, provenance, eval_env = _read(kind, source, Path(dataset_dir), data)
    if data.reward.kind == "sparse" and provenance.get("has_success") is False:
        raise DatasetError(
            f"{source}: its episodes record no success signal (infos['success']), so --reward sparse "
            "(0 at success, -1 elsewhere) has nothing to read; use the dataset's rewards, with --reward-scale / --reward-shift"
        )
    train, val = _scaled_actions(train, val, data.action_scaling, provenance)
    provenance["reward"] = {"kind": data.reward.kind, "scale": data.reward.scale, "shift": data.reward.shift}
    train = data.reward.apply(train)
    val = None if val is None else data.reward.apply(val)
    return LoadedData(train, val, provenance, eval_env)
