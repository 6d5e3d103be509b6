"""The in-memory offline dataset every source (OGBench, Minari, LeRobot, transitions files) yields.

Rows are transitions in time order, episode after episode: `terminals` marks the last row of
each episode, so action chunks (`--action-horizon`) never cross an episode boundary, whatever
the source. `masks` is 0 where the episode ends in a way the value must not bootstrap past
(success for OGBench's singletask relabelling, `terminated` for gymnasium/Minari data);
`success` is where the task counts as solved (the sparse reward reads it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from training.data.errors import DatasetError

# ALGORITHM.md, "Details the reference implementation settles": dataset actions are clipped
# to +-(1 - 1e-5) on load, so no target sits exactly on the policy's clipping bound.
ACTION_CLIP = 1 - 1e-5
# ... and a constant observation dimension (std < 1e-6) is normalised with std 1.
MIN_OBSERVATION_STD = 1e-6

ARRAY_FIELDS = ("observations", "actions", "rewards", "masks", "terminals", "next_observations")


@dataclass(frozen=True)
class OfflineDataset:
    """Transitions of one split; arrays are row-aligned."""

    observations: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N, action_dim] float32
    rewards: np.ndarray  # [N] float32 (OGBench singletask: #satisfied subtasks - #subtasks)
    masks: np.ndarray  # [N] float32, 0 where the value does not bootstrap (success / terminated)
    terminals: np.ndarray  # [N] float32, 1 on the last transition of an episode
    next_observations: np.ndarray  # [N, obs_dim] float32
    source: str  # the file, folder or id it came from
    success: np.ndarray | None = None  # [N] float32, 1 where solved; None: 1 - masks (OGBench's)

    @property
    def size(self) -> int:
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episodes(self) -> int:
        return int(self.terminals.sum())

    @property
    def success_flags(self) -> np.ndarray:
        """1 where the transition reaches the task's success, as float32."""
        if self.success is not None:
            return np.asarray(self.success, dtype=np.float32)
        return (np.asarray(self.masks) == 0).astype(np.float32)


def make_dataset(
    source: str,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    masks: np.ndarray,
    terminals: np.ndarray,
    next_observations: np.ndarray,
    success: np.ndarray | None = None,
) -> OfflineDataset:
    """An OfflineDataset with float32 arrays and clipped actions, checked for shapes and NaN.

    Actions are clipped to +-ACTION_CLIP, as OGBench data is on load: a source whose actions
    leave [-1, 1] by much is refused, since the policy's outputs are bounded there.
    """
    arrays = {
        "observations": _as_2d(source, "observations", observations),
        "actions": _as_2d(source, "actions", actions),
        "rewards": np.asarray(rewards, dtype=np.float32).reshape(-1),
        "masks": np.asarray(masks, dtype=np.float32).reshape(-1),
        "terminals": np.asarray(terminals, dtype=np.float32).reshape(-1),
        "next_observations": _as_2d(source, "next_observations", next_observations),
    }
    rows = len(arrays["observations"])
    for name, array in arrays.items():
        if len(array) != rows:
            raise DatasetError(
                f"{source}: '{name}' has {len(array)} rows; expected {rows} (one per transition)"
            )
        if not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array.reshape(rows, -1)).all(axis=1))[0])
            raise DatasetError(f"{source}: '{name}' holds NaN or infinite values (first at row {bad})")
    if rows == 0:
        raise DatasetError(f"{source}: no transitions")
    if arrays["next_observations"].shape[1] != arrays["observations"].shape[1]:
        raise DatasetError(
            f"{source}: 'next_observations' has {arrays['next_observations'].shape[1]} columns; "
            f"expected {arrays['observations'].shape[1]} like 'observations'"
        )
    if arrays["terminals"][-1] != 1:
        arrays["terminals"][-1] = 1.0  # the last row always ends its episode
    flags = None if success is None else np.asarray(success, dtype=np.float32).reshape(-1)
    if flags is not None and len(flags) != rows:
        raise DatasetError(f"{source}: 'success' has {len(flags)} rows; expected {rows}")
    return OfflineDataset(source=source, success=flags, **arrays)


def _as_2d(source: str, name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        return array[:, None]
    if array.ndim != 2:
        raise DatasetError(f"{source}: '{name}' has shape {array.shape}; expected [rows, dim] (flat vectors)")
    return array


def clip_actions(dataset: OfflineDataset) -> OfflineDataset:
    """Actions clipped to +-ACTION_CLIP, refused when they leave [-1, 1] by more than rounding."""
    worst = float(np.abs(dataset.actions).max())
    if worst > 1.0 + 1e-3:
        raise DatasetError(
            f"{dataset.source}: actions reach {worst:.4g}; expected values in [-1, 1] (the policy's range). "
            "Train with --action-scaling minmax (or auto), or rescale them before training"
        )
    return replace(dataset, actions=np.clip(dataset.actions, -ACTION_CLIP, ACTION_CLIP))


def action_bounds(*datasets: OfflineDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (low, high) of the datasets' actions; a constant dimension gets +-1 around it."""
    low = np.min([d.actions.min(axis=0) for d in datasets], axis=0)
    high = np.max([d.actions.max(axis=0) for d in datasets], axis=0)
    flat = (high - low) < 1e-6
    return np.where(flat, low - 1.0, low).astype(np.float32), np.where(flat, high + 1.0, high).astype(
        np.float32
    )


def scale_actions(dataset: OfflineDataset, low: np.ndarray, high: np.ndarray) -> OfflineDataset:
    """Actions mapped affinely from [low, high] to [-1, 1] per dimension (then clipped)."""
    scaled = (dataset.actions - low) / (high - low) * 2.0 - 1.0
    return clip_actions(replace(dataset, actions=np.clip(scaled, -1.0, 1.0).astype(np.float32)))


def episode_slices(dataset: OfflineDataset) -> list[slice]:
    """The rows of each episode, in order."""
    ends = np.flatnonzero(np.asarray(dataset.terminals) > 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [slice(int(a), int(b) + 1) for a, b in zip(starts, ends, strict=True)]


def select_rows(dataset: OfflineDataset, rows: np.ndarray, source: str | None = None) -> OfflineDataset:
    """The dataset restricted to `rows` (whole episodes, in order)."""
    arrays = {name: np.asarray(getattr(dataset, name))[rows] for name in ARRAY_FIELDS}
    success = None if dataset.success is None else np.asarray(dataset.success)[rows]
    return OfflineDataset(source=source or dataset.source, success=success, **arrays)


def split_episodes(dataset: OfflineDataset, val_fraction: float) -> tuple[OfflineDataset, OfflineDataset]:
    """(train, val): the last `val_fraction` of episodes held out (at least one, if there are two).

    The split is by whole episodes and deterministic, so a resumed run and every seed see the
    same held-out data; a single-episode dataset cannot be split and is refused.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1); got {val_fraction}")
    episodes = episode_slices(dataset)
    if len(episodes) < 2:
        raise DatasetError(
            f"{dataset.source}: {len(episodes)} episode(s); at least 2 are needed to hold one out for validation"
        )
    held_out = min(len(episodes) - 1, max(1, round(len(episodes) * val_fraction)))
    boundary = episodes[-held_out].start
    rows = np.arange(dataset.size)
    return (
        select_rows(dataset, rows[:boundary]),
        select_rows(dataset, rows[boundary:], f"{dataset.source} (held-out episodes)"),
    )


def with_rewards(dataset: OfflineDataset, rewards: np.ndarray) -> OfflineDataset:
    return replace(dataset, rewards=np.asarray(rewards, dtype=np.float32))


def content_sha256(dataset: OfflineDataset) -> str:
    """SHA-256 of the transition arrays as loaded (float32, little-endian, in ARRAY_FIELDS order).

    It names the data a model learned from independently of the file format: an OGBench npz and
    its Minari conversion hash the same when they load to the same transitions.
    """
    digest = hashlib.sha256()
    for name in ARRAY_FIELDS:
        array = np.ascontiguousarray(np.asarray(getattr(dataset, name), dtype="<f4"))
        digest.update(name.encode())
        digest.update(str(array.shape).encode())
        digest.update(array.data)
    return digest.hexdigest()


def normalization_statistics(
    dataset: OfflineDataset, kind: str = "mean-std"
) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, std) the networks' ObservationNormalizer applies: the dataset's
    (`observation_statistics`), or 0 and 1 for `kind` "none" (observations as they are)."""
    if kind == "none":
        return np.zeros(dataset.obs_dim, np.float32), np.ones(dataset.obs_dim, np.float32)
    if kind != "mean-std":
        raise ValueError(f"observation normalization must be 'mean-std' or 'none'; got {kind!r}")
    return observation_statistics(dataset)


def observation_statistics(dataset: OfflineDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation of the observations (float32); std < 1e-6 -> 1."""
    observations = dataset.observations.astype(np.float64)
    std = observations.std(axis=0)
    std = np.where(std < MIN_OBSERVATION_STD, 1.0, std)
    return observations.mean(axis=0).astype(np.float32), std.astype(np.float32)
