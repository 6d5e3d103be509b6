"""Checks a raw OGBench-format file must pass before ogbench's own loader sees it.

ogbench's `load_dataset` trusts its input: a NaN, a short key or a missing final terminal
would surface later as a silent misalignment or a NaN loss, far from the file that caused it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.env_families import EnvFamily
from training.data.errors import DatasetError

# Raw keys and their number of dimensions, in the order OGBench writes them.
RAW_KEY_NDIM = {"observations": 2, "actions": 2, "terminals": 1, "qpos": 2, "qvel": 2, "button_states": 2}
CORE_KEYS = ("observations", "actions", "terminals")


def required_keys(family: EnvFamily | None) -> tuple[str, ...]:
    """Keys a file needs: the core ones, plus what reward relabelling reads for `family`."""
    if family is None:
        return CORE_KEYS
    return CORE_KEYS + ("qpos",) + (("button_states",) if family.has_button_states else ())


def validate_raw_arrays(path: Path, arrays: dict[str, np.ndarray], required: tuple[str, ...]) -> None:
    """Raise DatasetError naming `path` and the first problem found; return None if usable."""
    missing = [key for key in required if key not in arrays]
    if missing:
        raise DatasetError(
            f"{path}: missing key(s) {missing}; expected {list(required)}, found {sorted(arrays)}"
        )
    present = [key for key in RAW_KEY_NDIM if key in arrays]
    for key in present:
        _check_numeric_shape(path, key, arrays[key])
    _check_lengths(path, {key: arrays[key] for key in present})
    for key in present:
        _check_finite(path, key, arrays[key])
    _check_terminals(path, arrays["terminals"])


def _check_numeric_shape(path: Path, key: str, array: np.ndarray) -> None:
    if array.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: key {key!r} has dtype {array.dtype}; expected a numeric or bool dtype")
    if array.ndim != RAW_KEY_NDIM[key]:
        raise DatasetError(
            f"{path}: key {key!r} has shape {array.shape}; expected {RAW_KEY_NDIM[key]} dimensions"
        )


def _check_lengths(path: Path, arrays: dict[str, np.ndarray]) -> None:
    rows = len(arrays["observations"])
    if rows == 0:
        raise DatasetError(f"{path}: 'observations' has 0 rows; expected at least one episode")
    for key, array in arrays.items():
        if len(array) != rows:
            raise DatasetError(
                f"{path}: key {key!r} has {len(array)} rows; expected {rows} (the rows of 'observations')"
            )


def _check_finite(path: Path, key: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        return
    bad_rows = np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))
    if bad_rows.size:
        raise DatasetError(
            f"{path}: key {key!r} has NaN/inf in {bad_rows.size} row(s), first at row {bad_rows[0]}; "
            "expected finite values"
        )


def _check_terminals(path: Path, terminals: np.ndarray) -> None:
    values = np.unique(terminals)
    if not np.isin(values, (0, 1)).all():
        raise DatasetError(f"{path}: 'terminals' holds values {values[:5].tolist()}; expected only 0 and 1")
    if terminals[-1] != 1:
        raise DatasetError(
            f"{path}: last row has terminal={terminals[-1]}; expected 1 (every episode ends with terminal=1)"
        )
