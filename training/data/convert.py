"""`mfql-data convert`: any source mfql reads -> a Minari dataset or a transitions file.

OGBench npz -> Minari (the singletask name picks the task whose rewards and success are
written; its evaluation env is stored, so `minari:<id>` runs evaluate as the OGBench run does),
Minari -> transitions npz/HDF5, LeRobot -> transitions npz/HDF5. The data is written as loaded,
with the source's rewards: reward conventions are a training choice (`--reward`).
"""

from __future__ import annotations

from pathlib import Path

from training.data.dataset import content_sha256
from training.data.errors import DatasetError
from training.data.minari_files import PREFIX as MINARI_PREFIX
from training.data.sources import read_source, source_format
from training.data.transitions_files import SUFFIXES, write_transitions


def convert(
    source: str,
    destination: str,
    dataset_dir: Path | str = "data",
    observation_keys: tuple[str, ...] | None = None,
    split: str = "train",
    overwrite: bool = False,
) -> dict:
    """Write `source`'s transitions to `destination` (minari:<id> or a .npz/.h5 path); a summary back."""
    kind = source_format(source)
    if split not in ("train", "val"):
        raise DatasetError(f"split must be train or val; got {split!r}")
    if split == "val" and kind != "ogbench":
        raise DatasetError(
            "--split val applies to OGBench files (their -val.npz); other sources are converted whole"
        )
    loaded = read_source(source, dataset_dir, observation_keys)
    dataset = loaded.val if split == "val" else loaded.train
    if destination.startswith(MINARI_PREFIX):
        dataset_id = destination[len(MINARI_PREFIX) :]
        written = _to_minari(dataset, dataset_id, kind, source, overwrite)
    else:
        path = Path(destination).expanduser()
        if path.suffix.lower() not in SUFFIXES:
            raise DatasetError(
                f"{destination}: expected minari:<id> or a file ending in {', '.join(SUFFIXES)}"
            )
        if path.exists() and not overwrite:
            raise DatasetError(f"{path} already exists; pass --overwrite to replace it")
        written = str(write_transitions(dataset, path))
    return {
        "source": source,
        "format": kind,
        "written": written,
        "transitions": dataset.size,
        "episodes": dataset.episodes,
        "content_sha256": content_sha256(dataset),
    }


def _to_minari(dataset, dataset_id: str, kind: str, source: str, overwrite: bool) -> str:
    import shutil

    from training.data.minari_files import datasets_root, write_minari

    folder = datasets_root() / dataset_id
    if folder.exists():
        if not overwrite:
            raise DatasetError(
                f"minari:{dataset_id} already exists at {folder}; pass --overwrite to replace it"
            )
        shutil.rmtree(folder)
    env_id = None
    if kind == "ogbench":
        import ogbench.manipspace  # noqa: F401 - registers the singletask env ids

        from training.data.task_names import parse_task_name

        env_id = parse_task_name(source).task_env
    return str(write_minari(dataset, dataset_id, env_id))
