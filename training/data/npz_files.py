"""Reading and writing `.npz` files: no pickles in, byte-reproducible and atomic out."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from training.data.errors import DatasetError

# A fixed member timestamp: np.savez stamps the wall clock, so equal arrays would give unequal files.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an existing `.npz` file, refusing pickled (object) arrays."""
    if not zipfile.is_zipfile(path):
        # np.load would try to unpickle anything that is neither a zip nor a .npy header.
        raise DatasetError(
            f"{path}: not a readable .npz archive (no zip structure; truncated or not an .npz?)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{path}: not a readable .npz archive ({error})") from error
    except ValueError as error:
        # numpy raises ValueError for object arrays when pickles are refused, and for bad headers.
        raise DatasetError(f"{path}: cannot read arrays without pickle ({error})") from error


def _write_npz(handle, arrays: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for key, array in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, mode="w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)


def write_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed `.npz` (what np.savez_compressed writes) that appears only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so the rename cannot cross filesystems; open() keeps the user's umask.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            _write_npz(handle, arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
