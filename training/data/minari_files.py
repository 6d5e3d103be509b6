"""Minari datasets (Farama's offline-RL format, D4RL's home), read locally and written by minari's API.

An episode stores `observations` (T + 1), `actions`, `rewards`, `terminations`, `truncations`
(T each) and `infos`. Transitions are (o_t, a_t, r_t, o_{t+1}); the mask is 1 - terminated;
success is `infos['success']` where the episodes record it; where they do not (e.g. MuJoCo
locomotion, whose terminations are failures) the dataset has no success signal, and a sparse
reward is refused rather than guessed. Dict
observations are flattened in the order of `observation_keys` (default: the Box sub-spaces
by name), the same order evaluation uses (training/envs.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.dataset import OfflineDataset, episode_slices, make_dataset
from training.data.errors import DatasetError, DatasetFileNotFoundError

PREFIX = "minari:"


@dataclass(frozen=True)
class MinariData:
    dataset: OfflineDataset
    observation_keys: tuple[str, ...] | None  # None: a Box observation, used as it is
    env_spec: str | None  # the stored env id (evaluation builds it), None if the dataset has none
    has_success: bool  # whether episodes record infos['success']
    path: str  # the dataset's folder on this machine


def datasets_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def load_minari(dataset_id: str):
    """minari's MinariDataset for a local id; a missing id names the command that downloads it."""
    import minari

    try:
        return minari.load_dataset(dataset_id)
    except FileNotFoundError as error:
        raise DatasetFileNotFoundError(
            f"minari:{dataset_id}: no such Minari dataset under {datasets_root()} (MINARI_DATASETS_PATH). "
            f"Where a network exists, download it with: minari download {dataset_id} "
            f"(then copy {datasets_root() / dataset_id} here if this machine is offline)"
        ) from error
    except ValueError as error:  # a malformed id, or a dataset of an unsupported minari version
        raise DatasetError(f"minari:{dataset_id}: {error}") from error


def observation_keys_of(space, requested: tuple[str, ...] | None, dataset_id: str) -> tuple[str, ...] | None:
    """Which Dict sub-observations to concatenate; None for a Box space."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Box):
        if requested:
            raise DatasetError(
                f"minari:{dataset_id}: observations are one Box; --observation-keys does not apply"
            )
        return None
    if not isinstance(space, gymnasium.spaces.Dict):
        raise DatasetError(
            f"minari:{dataset_id}: observation space {type(space).__name__}; expected a Box or a Dict of Boxes"
        )
    boxes = sorted(
        key
        for key, sub in space.spaces.items()
        if isinstance(sub, gymnasium.spaces.Box) and len(sub.shape) <= 1
    )
    keys = tuple(requested) if requested else tuple(boxes)
    for key in keys:
        if key not in boxes:
            raise DatasetError(
                f"minari:{dataset_id}: observation key {key!r} is not a vector Box; vector keys are {boxes}"
            )
    if not keys:
        raise DatasetError(
            f"minari:{dataset_id}: no vector Box in the Dict observation space (images are not taken yet)"
        )
    return keys


def flatten_observation(observation, keys: tuple[str, ...] | None) -> np.ndarray:
    """One observation (or a stack of them) as a float32 vector, in the keys' order."""
    if keys is None:
        return np.asarray(observation, dtype=np.float32)
    parts = [np.asarray(observation[key], dtype=np.float32) for key in keys]
    return np.concatenate([p.reshape(*p.shape[:-1], -1) if p.ndim else p.reshape(1) for p in parts], axis=-1)


def _success(infos, terminations: np.ndarray) -> tuple[np.ndarray, bool]:
    flags = (infos or {}).get("success")
    if flags is None:
        return np.zeros(len(terminations), dtype=np.float32), False
    flags = np.asarray(flags, dtype=np.float32).reshape(-1)
    steps = len(terminations)
    if len(flags) == steps + 1:  # the reset's info comes first
        flags = flags[1:]
    if len(flags) != steps:
        raise DatasetError(f"infos['success'] has {len(flags)} entries; expected {steps} or {steps + 1}")
    return flags, True


def read_minari(dataset_id: str, observation_keys: tuple[str, ...] | None = None) -> MinariData:
    """Every episode of a local Minari dataset as transitions (module docstring)."""
    dataset = load_minari(dataset_id)
    keys = observation_keys_of(dataset.observation_space, observation_keys, dataset_id)
    source = f"{PREFIX}{dataset_id}"
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("o", "a", "r", "m", "t", "n", "s")}
    has_success = True
    for episode in dataset.storage.get_episodes(dataset.episode_indices):
        observations = flatten_observation(episode["observations"], keys)
        steps = len(episode["actions"])
        if len(observations) != steps + 1 or len(episode["rewards"]) != steps:
            raise DatasetError(
                f"{source}: episode {episode['id']} has {len(observations)} observations, {steps} actions and "
                f"{len(episode['rewards'])} rewards; expected T + 1, T and T (episodes whose lengths disagree)"
            )
        if steps == 0:
            continue
        terminations = np.asarray(episode["terminations"], dtype=bool)
        try:
            success, recorded = _success(episode.get("infos"), terminations)
        except DatasetError as error:
            raise DatasetError(f"{source}: episode {episode['id']}: {error}") from None
        has_success &= recorded
        ends = np.zeros(steps, dtype=np.float32)
        ends[-1] = 1.0
        columns["o"].append(observations[:-1])
        columns["n"].append(observations[1:])
        columns["a"].append(np.asarray(episode["actions"], dtype=np.float32).reshape(steps, -1))
        columns["r"].append(np.asarray(episode["rewards"], dtype=np.float32))
        columns["m"].append(1.0 - terminations.astype(np.float32))
        columns["t"].append(ends)
        columns["s"].append(success)
    if not columns["o"]:
        raise DatasetError(f"{source}: no episodes with steps")
    joined = {name: np.concatenate(parts) for name, parts in columns.items()}
    offline = make_dataset(
        source,
        joined["o"],
        joined["a"],
        joined["r"],
        joined["m"],
        joined["t"],
        joined["n"],
        success=joined["s"],
    )
    spec = dataset.env_spec
    return MinariData(
        offline,
        keys,
        spec.id if spec is not None else None,
        has_success,
        str(Path(dataset.storage.data_path).parent),
    )


def write_minari(offline: OfflineDataset, dataset_id: str, env_id: str | None = None) -> Path:
    """Write `offline` as Minari dataset `dataset_id` (one EpisodeBuffer per episode) with minari's API.

    Episode boundaries and next observations carry over exactly when each episode's next
    observations are its observations shifted by one (true of OGBench and Minari data);
    otherwise an episode is refused, since Minari stores one observation sequence per episode.
    `env_id` (a registered gymnasium id) is stored so that evaluation can rebuild the env.
    """
    import gymnasium
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = []
    success = offline.success_flags
    for number, rows in enumerate(episode_slices(offline)):
        observations = offline.observations[rows]
        following = offline.next_observations[rows]
        if len(observations) > 1 and not np.array_equal(observations[1:], following[:-1]):
            raise DatasetError(
                f"{offline.source}: episode {number}'s next_observations are not its observations shifted by one; "
                "Minari stores one observation sequence per episode"
            )
        buffers.append(
            EpisodeBuffer(
                id=number,
                observations=np.concatenate([observations, following[-1:]]),
                actions=offline.actions[rows],
                rewards=offline.rewards[rows],
                terminations=offline.masks[rows] == 0,
                truncations=np.arange(len(observations)) == len(observations) - 1,
                infos={"success": success[rows].astype(bool)},
            )
        )
    space = gymnasium.spaces.Box(-np.inf, np.inf, (offline.obs_dim,), np.float32)
    actions = gymnasium.spaces.Box(-1.0, 1.0, (offline.action_dim,), np.float32)
    try:
        written = minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=gymnasium.spec(env_id) if env_id else None,
            observation_space=space,
            action_space=actions,
            algorithm_name="mfql-data convert",
            description=f"converted by mfql-data convert from {offline.source}",
        )
    except (ValueError, AssertionError) as error:
        raise DatasetError(f"minari:{dataset_id}: minari refused the dataset ({error})") from error
    return Path(written.storage.data_path).parent
