"""Plain transitions files (docs/datasets.md): `.npz` or HDF5 (`.h5`/`.hdf5`) with flat arrays.

Required: `observations` [N, obs_dim], `actions` [N, action_dim], `rewards` [N], `terminals`
[N] (1 on the last transition of each episode: the episode boundary). Optional: `masks` [N]
(0 where the value must not bootstrap; default 1 - terminals, i.e. every episode end is a
true termination: give masks when episodes end by a time limit), `next_observations`
[N, obs_dim] (default: the next row of the same episode; an episode's last row then has none,
and is kept only where its mask is 0), `success` [N] (default 1 - masks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.dataset import OfflineDataset, make_dataset
from training.data.errors import DatasetError
from training.data.npz_files import read_npz, write_npz_atomically

REQUIRED = ("observations", "actions", "rewards", "terminals")
OPTIONAL = ("masks", "next_observations", "success")
SUFFIXES = (".npz", ".h5", ".hdf5")


def is_transitions_file(path: Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def _read_hdf5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return {
                key: handle[key][()]
                for key in (*REQUIRED, *OPTIONAL)
                if key in handle and isinstance(handle[key], h5py.Dataset)
            }
    except OSError as error:
        raise DatasetError(f"{path}: not a readable HDF5 file ({error})") from error


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    return read_npz(path) if path.suffix.lower() == ".npz" else _read_hdf5(path)


def read_transitions(path: Path) -> OfflineDataset:
    """The file's transitions (module docstring for the defaults of the optional arrays)."""
    path = Path(path).expanduser()
    arrays = read_arrays(path)
    missing = [key for key in REQUIRED if key not in arrays]
    if missing:
        raise DatasetError(
            f"{path}: missing array(s) {missing}; a transitions file needs {list(REQUIRED)} "
            f"(optional: {list(OPTIONAL)}; docs/datasets.md)"
        )
    rows = len(arrays["observations"])
    for key, array in arrays.items():
        if len(array) != rows:
            raise DatasetError(f"{path}: '{key}' has {len(array)} rows; expected {rows} like 'observations'")
    terminals = np.asarray(arrays["terminals"], dtype=np.float32).reshape(-1)
    masks = np.asarray(arrays.get("masks", 1.0 - terminals), dtype=np.float32).reshape(-1)
    observations = np.asarray(arrays["observations"], dtype=np.float32)
    actions, rewards = arrays["actions"], arrays["rewards"]
    success = arrays.get("success")
    if "next_observations" in arrays:
        following = arrays["next_observations"]
        keep = slice(None)
    else:
        following = np.empty_like(observations)
        following[:-1] = observations[1:]
        ends = terminals > 0
        ends[-1] = True
        following[ends] = observations[ends]  # never read: such a row is kept only with mask 0
        keep = ~ends | (
            masks == 0
        )  # a last row with no next observation and a live mask has nothing to bootstrap from
        new_terminals = np.zeros(rows, dtype=np.float32)
        kept = np.flatnonzero(keep)
        episode_id = np.concatenate([[0], np.cumsum(ends[:-1])])[kept]
        last = np.ones(len(kept), dtype=bool)
        last[:-1] = episode_id[1:] != episode_id[:-1]
        new_terminals[kept[last]] = 1.0
        terminals = new_terminals
    return make_dataset(
        str(path),
        observations[keep],
        np.asarray(actions)[keep],
        np.asarray(rewards)[keep],
        masks[keep],
        terminals[keep],
        np.asarray(following)[keep],
        success=None if success is None else np.asarray(success)[keep],
    )


def write_transitions(dataset: OfflineDataset, path: Path) -> Path:
    """Write every array (success included), as `.npz` (atomic) or HDF5 by the suffix."""
    path = Path(path).expanduser()
    arrays = {
        "observations": dataset.observations,
        "actions": dataset.actions,
        "rewards": dataset.rewards,
        "terminals": dataset.terminals,
        "masks": dataset.masks,
        "next_observations": dataset.next_observations,
        "success": dataset.success_flags,
    }
    if path.suffix.lower() == ".npz":
        write_npz_atomically(path, arrays)
        return path
    if path.suffix.lower() not in SUFFIXES:
        raise DatasetError(f"{path}: expected a .npz, .h5 or .hdf5 file name")
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with h5py.File(temporary, "w") as handle:
            for key, array in arrays.items():
                handle.create_dataset(key, data=np.asarray(array, dtype=np.float32))
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
