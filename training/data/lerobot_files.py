"""Reading a LeRobot dataset folder (format v2.1 or v3.0) into transitions, with pyarrow only.

LeRobot itself cannot be installed beside mfql (it needs Python >= 3.12 and torch < 2.12), so
the files are read as the format describes them:
- `meta/info.json`: `codebase_version`, `fps`, `features` ({key: {dtype, shape, names}});
- frames in parquet: v3.0 `data/chunk-XXX/file-XXX.parquet` (many episodes per file), v2.1
  `data/chunk-XXX/episode_XXXXXX.parquet`; each row has `episode_index` and `frame_index`;
- episode lengths: v3.0 `meta/episodes/chunk-XXX/file-XXX.parquet`, v2.1 `meta/episodes.jsonl`.

A frame holds the observation, the action taken there and its outcome (`next.reward`,
`next.done`, `next.success`); the next observation is the next frame of the same episode.
A frame whose outcome ends the value (success where `next.success` exists, else `next.done`)
gets mask 0; an episode's last frame has no next frame, so it is kept only when it ends the
value (its next observation is then never read) and dropped otherwise (a truncated episode).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.dataset import OfflineDataset, make_dataset
from training.data.errors import DatasetError

INFO_FILE = Path("meta/info.json")
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
IMAGE_DTYPES = ("image", "video")
FLOAT_DTYPES = ("float16", "float32", "float64")
REWARD_KEY, DONE_KEY, SUCCESS_KEY = "next.reward", "next.done", "next.success"
STATE_KEY, ACTION_KEY = "observation.state", "action"


@dataclass(frozen=True)
class LeRobotData:
    dataset: OfflineDataset
    observation_keys: tuple[str, ...]
    action_names: list[str] | None
    fps: float | None
    version: str


def is_lerobot_folder(path: Path) -> bool:
    return (Path(path) / INFO_FILE).is_file()


def read_info(folder: Path) -> dict:
    path = folder / INFO_FILE
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (expected a LeRobot dataset with {INFO_FILE})")
    if not path.is_file():
        raise DatasetError(
            f"{folder}: not a LeRobot dataset (no {INFO_FILE}); expected meta/info.json and data/chunk-*/*.parquet"
        )
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from error
    for key in ("codebase_version", "features"):
        if key not in info:
            raise DatasetError(f"{path}: missing field '{key}' (is this a LeRobot dataset?)")
    if info["codebase_version"] not in SUPPORTED_VERSIONS:
        raise DatasetError(
            f"{path}: codebase_version {info['codebase_version']!r}; expected one of {list(SUPPORTED_VERSIONS)}"
        )
    if not isinstance(info["features"], dict):
        raise DatasetError(f"{path}: 'features' must be an object of {{key: {{dtype, shape}}}}")
    return info


def default_observation_keys(info: dict, folder: Path) -> tuple[str, ...]:
    """`observation.state` first, then the other float vector `observation.*` features, by name."""
    features = info["features"]
    vectors = [
        key
        for key, spec in features.items()
        if key.startswith("observation.") and spec.get("dtype") in FLOAT_DTYPES
    ]
    if not vectors:
        images = [key for key, spec in features.items() if spec.get("dtype") in IMAGE_DTYPES]
        raise DatasetError(
            f"{folder / INFO_FILE}: no float vector observation feature (observation.*) to train on"
            + (
                f"; only image features {images}, which mfql does not take yet (state-based policies only)"
                if images
                else ""
            )
        )
    return tuple(sorted(vectors, key=lambda key: (key != STATE_KEY, key)))


def _check_keys(info: dict, keys: tuple[str, ...], folder: Path) -> None:
    features = info["features"]
    for key in keys:
        if key not in features:
            raise DatasetError(f"{folder / INFO_FILE}: no feature {key!r}; it has {sorted(features)}")
        dtype = features[key].get("dtype")
        if dtype in IMAGE_DTYPES:
            raise DatasetError(
                f"{folder / INFO_FILE}: feature {key!r} is an {dtype}; mfql trains state-based policies "
                "and does not take image observations yet: pass --observation-keys with vector features only"
            )
        if dtype not in FLOAT_DTYPES:
            raise DatasetError(
                f"{folder / INFO_FILE}: feature {key!r} has dtype {dtype!r}; expected one of {FLOAT_DTYPES}"
            )


def _action_names(info: dict) -> list[str] | None:
    names = info["features"].get(ACTION_KEY, {}).get("names")
    if isinstance(names, dict):  # e.g. {"motors": [...]}
        names = next(iter(names.values()), None)
    return [str(name) for name in names] if isinstance(names, list) else None


def _data_files(folder: Path) -> list[Path]:
    files = sorted((folder / "data").glob("chunk-*/*.parquet"))
    if not files:
        raise DatasetError(
            f"{folder}: no frame files data/chunk-*/*.parquet (not a LeRobot dataset, or empty)"
        )
    return files


def _column(table, name: str, path: Path, width: int | None) -> np.ndarray:
    """A column as a numpy array: [rows] for scalars, [rows, width] for list columns."""
    import pyarrow as pa

    column = table.column(name)  # a record batch's column: one array
    if (
        pa.types.is_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
        or pa.types.is_large_list(column.type)
    ):
        if column.null_count:
            raise DatasetError(f"{path}: column {name!r} has {column.null_count} missing values")
        values = column.flatten().to_numpy(zero_copy_only=False)
        rows = len(column)
        if rows and values.size % rows:
            raise DatasetError(f"{path}: column {name!r} has rows of different lengths")
        array = values.reshape(rows, -1) if rows else values.reshape(0, width or 0)
        if width is not None and array.shape[1] != width:
            raise DatasetError(
                f"{path}: column {name!r} has {array.shape[1]} values per row; info.json says {width}"
            )
        return array
    if column.null_count:
        raise DatasetError(f"{path}: column {name!r} has {column.null_count} missing values")
    return column.to_numpy(zero_copy_only=False)


def _feature_width(info: dict, key: str) -> int:
    shape = info["features"][key].get("shape") or [1]
    return int(np.prod(shape))


def _read_frames(folder: Path, info: dict, columns: list[str]) -> dict[str, np.ndarray]:
    """The columns of every frame file, in file order, as numpy arrays.

    Files are read in record batches straight into arrays allocated once for all rows, so
    memory stays near the arrays' size (reading whole tables held pyarrow's decoded copy too).
    """
    import pyarrow.parquet as pq

    files = []
    for path in _data_files(folder):
        try:
            handle = pq.ParquetFile(path)
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path}: not a readable parquet file ({error})") from error
        missing = [name for name in columns if name not in handle.schema_arrow.names]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; info.json lists them as features")
        files.append((path, handle))
    total = sum(handle.metadata.num_rows for _, handle in files)
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for path, handle in files:
        try:
            batches = handle.iter_batches(batch_size=BATCH_ROWS, columns=columns)
            for batch in batches:
                for name in columns:
                    width = (
                        None
                        if name in _INDEX_COLUMNS or name not in info["features"]
                        else _feature_width(info, name)
                    )
                    values = _column(batch, name, path, width)
                    if name not in arrays:
                        arrays[name] = np.empty((total, *values.shape[1:]), dtype=values.dtype)
                    arrays[name][offset : offset + len(values)] = values
                offset += batch.num_rows
        except (OSError, ValueError) as error:
            if isinstance(error, DatasetError):
                raise
            raise DatasetError(f"{path}: not a readable parquet file ({error})") from error
    return arrays


BATCH_ROWS = 65_536  # rows per record batch while reading frames
_INDEX_COLUMNS = ("episode_index", "frame_index")


def _stored_lengths(folder: Path) -> tuple[dict[int, int], Path] | None:
    """{episode_index: length} from the episode metadata, and the file(s) it came from."""
    jsonl = folder / "meta/episodes.jsonl"
    if jsonl.is_file():
        lengths = {}
        for number, line in enumerate(jsonl.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                lengths[int(record["episode_index"])] = int(record["length"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise DatasetError(
                    f"{jsonl}: line {number} is not an episode record with 'episode_index' and 'length' ({error})"
                ) from error
        return lengths, jsonl
    files = sorted((folder / "meta/episodes").glob("chunk-*/*.parquet"))
    if not files:
        return None
    import pyarrow.parquet as pq

    lengths = {}
    for path in files:
        table = pq.read_table(path, columns=["episode_index", "length"])
        for index, length in zip(
            table.column("episode_index").to_pylist(), table.column("length").to_pylist(), strict=True
        ):
            lengths[int(index)] = int(length)
    return lengths, folder / "meta/episodes"


def read_lerobot(folder: Path, observation_keys: tuple[str, ...] | None = None) -> LeRobotData:
    """All frames of the folder as transitions (see the module docstring for the rules)."""
    folder = Path(folder).expanduser()
    info = read_info(folder)
    keys = tuple(observation_keys) if observation_keys else default_observation_keys(info, folder)
    _check_keys(info, keys, folder)
    features = info["features"]
    if ACTION_KEY not in features:
        raise DatasetError(
            f"{folder / INFO_FILE}: no '{ACTION_KEY}' feature; offline RL needs the actions taken"
        )
    if REWARD_KEY not in features:
        raise DatasetError(
            f"{folder / INFO_FILE}: no '{REWARD_KEY}' feature. Offline RL needs a reward per frame: add a "
            f"'{REWARD_KEY}' float32 column to the data files (for example 1 on frames where the task is "
            f"done and 0 elsewhere, with '{SUCCESS_KEY}' true there) and list it in info.json's features; "
            "or convert to a transitions file with mfql-data convert and add 'rewards' there"
        )
    ends_key = SUCCESS_KEY if SUCCESS_KEY in features else DONE_KEY
    if ends_key not in features:
        raise DatasetError(
            f"{folder / INFO_FILE}: neither '{SUCCESS_KEY}' nor '{DONE_KEY}'; one is needed to know where episodes succeed"
        )
    frames = _read_frames(folder, info, [*_INDEX_COLUMNS, *keys, ACTION_KEY, REWARD_KEY, ends_key])
    episode, frame = frames["episode_index"].astype(np.int64), frames["frame_index"].astype(np.int64)
    # Rows in (episode, frame) order: files written in order need no sort (and no sorted copy).
    ordered = len(episode) < 2 or bool(
        np.all((episode[1:] > episode[:-1]) | ((episode[1:] == episode[:-1]) & (frame[1:] > frame[:-1])))
    )
    order = slice(None) if ordered else np.lexsort((frame, episode))
    episode, frame = episode[order], frame[order]
    _check_lengths(folder, episode, frame)
    parts = [frames.pop(key)[order].reshape(len(episode), -1) for key in keys]
    observations = (
        parts[0].astype(np.float32, copy=False)
        if len(parts) == 1
        else np.concatenate(parts, axis=1, dtype=np.float32)
    )
    del parts
    ends_value = frames[ends_key][order].astype(bool)
    last = np.ones(len(episode), dtype=bool)
    last[:-1] = episode[1:] != episode[:-1]
    # A last frame that does not end the value has no next observation: dropped (module docstring).
    rows = np.flatnonzero(~last | ends_value)
    following = np.where(last[rows], rows, rows + 1)  # a kept last frame's next observation is never read
    kept_episode = episode[rows]
    kept_last = np.ones(len(rows), dtype=bool)
    kept_last[:-1] = kept_episode[1:] != kept_episode[:-1]
    success = ends_value[rows].astype(np.float32)
    actions = frames.pop(ACTION_KEY)[order].reshape(len(episode), -1)[rows]
    dataset = make_dataset(
        str(folder),
        observations[rows],
        actions,
        frames[REWARD_KEY][order].reshape(-1)[rows],
        1.0 - success,
        kept_last,
        observations[following],
        success=success,
    )
    fps = info.get("fps")
    return LeRobotData(
        dataset, keys, _action_names(info), float(fps) if fps else None, info["codebase_version"]
    )


def _check_lengths(folder: Path, episode: np.ndarray, frame_index: np.ndarray) -> None:
    indices, counts = np.unique(episode, return_counts=True)
    expected = np.concatenate([np.arange(count) for count in counts]) if len(counts) else frame_index
    if not np.array_equal(frame_index.astype(np.int64), expected):
        bad = int(episode[np.flatnonzero(frame_index != expected)[0]])
        raise DatasetError(
            f"{folder}/data: episode {bad}'s 'frame_index' is not 0, 1, 2, ... (frames missing or repeated)"
        )
    stored = _stored_lengths(folder)
    if stored is None:
        return
    lengths, source = stored
    for index, count in zip(indices.tolist(), counts.tolist(), strict=True):
        if index in lengths and lengths[index] != count:
            raise DatasetError(
                f"{source}: episode {index} has 'length' {lengths[index]} but {count} frames in data/ "
                "(episodes whose lengths disagree)"
            )
    missing = sorted(set(lengths) - set(indices.tolist()))
    if missing:
        raise DatasetError(
            f"{source}: episode(s) {missing[:5]} listed with 'length' but have no frames in data/"
        )
