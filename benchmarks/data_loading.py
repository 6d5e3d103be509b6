"""How long `--dataset` takes to load, and how much memory, per source format (docs/performance.md).

One OGBench file is converted to each format (Minari, transitions .npz and .h5, a LeRobot v3.0
folder written here following the format), then each is loaded by `load_training_data` in a
fresh process, `--repeats` times, and timed; the process's peak RSS is compared with the size of
the arrays it holds (observations, next_observations, actions and four [N] columns, float32),
over the process's size once every reader's modules are imported.

    python benchmarks/data_loading.py --dataset puzzle-3x3-play-singletask-task1-v0 --dataset-dir data --work /tmp/loading
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROBE = """
import json, sys, time
start = time.perf_counter()
from training.data.sources import DataConfig, load_training_data
import minari, ogbench, pyarrow.parquet, h5py  # every reader's imports, before the baseline
imported = time.perf_counter()

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

before = status("VmRSS:")
source, dataset_dir = sys.argv[1], sys.argv[2]
ogbench = "singletask" in source and "/" not in source
data = DataConfig(source=None if ogbench else source, val_fraction=0.0)
loaded = load_training_data(source, dataset_dir, data)
done = time.perf_counter()
train = loaded.train
array_bytes = sum(getattr(train, n).nbytes for n in ("observations", "next_observations", "actions", "rewards", "masks", "terminals")) + train.success_flags.nbytes
print(json.dumps({"seconds": done - imported, "import_seconds": imported - start, "transitions": train.size,
                  "array_mb": array_bytes / 2**20, "rss_before_mb": before, "peak_rss_mb": status("VmHWM:"),
                  "peak_over_baseline_mb": status("VmHWM:") - before,
                  "sha256": loaded.provenance["content_sha256"]}))
"""


def write_lerobot_v3(dataset, folder: Path, fps: int = 10) -> None:
    """`dataset`'s episodes as LeRobot v3.0 frames (one frame per transition, plus each episode's last observation)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.data.dataset import episode_slices

    columns: dict[str, list] = {
        k: [] for k in ("state", "action", "reward", "success", "done", "episode", "frame")
    }
    for number, rows in enumerate(episode_slices(dataset)):
        length = rows.stop - rows.start
        columns["state"].append(
            np.concatenate([dataset.observations[rows], dataset.next_observations[rows][-1:]])
        )
        columns["action"].append(
            np.concatenate([dataset.actions[rows], np.zeros((1, dataset.action_dim), np.float32)])
        )
        columns["reward"].append(np.concatenate([dataset.rewards[rows], [0.0]]).astype(np.float32))
        columns["success"].append(np.concatenate([dataset.success_flags[rows] > 0, [False]]))
        columns["done"].append(np.arange(length + 1) == length)
        columns["episode"].append(np.full(length + 1, number, np.int64))
        columns["frame"].append(np.arange(length + 1, dtype=np.int64))
    joined = {k: np.concatenate(v) for k, v in columns.items()}
    state, action = joined["state"], joined["action"]
    table = pa.table(
        {
            "observation.state": pa.FixedSizeListArray.from_arrays(
                pa.array(state.reshape(-1)), state.shape[1]
            ),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), action.shape[1]),
            "next.reward": joined["reward"],
            "next.success": joined["success"],
            "next.done": joined["done"],
            "episode_index": joined["episode"],
            "frame_index": joined["frame"],
        }
    )
    (folder / "data/chunk-000").mkdir(parents=True, exist_ok=True)
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "data/chunk-000/file-000.parquet")
    features = {
        "observation.state": {"dtype": "float32", "shape": [state.shape[1]], "names": None},
        "action": {"dtype": "float32", "shape": [action.shape[1]], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": "v3.0",
        "fps": fps,
        "total_episodes": int(joined["episode"].max() + 1),
        "total_frames": len(state),
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "features": features,
    }
    (folder / "meta/info.json").write_text(json.dumps(info, indent=2))


def prepare(args: argparse.Namespace) -> dict[str, str]:
    """The sources to time, converting once into --work."""
    from training.data.convert import convert
    from training.data.sources import DataConfig, load_training_data

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MINARI_DATASETS_PATH"] = str(work / "minari")
    minari_id = "bench/" + args.dataset.replace("-singletask", "")
    sources = {
        "ogbench npz": args.dataset,
        "minari": f"minari:{minari_id}",
        "transitions npz": str(work / "transitions.npz"),
        "transitions h5": str(work / "transitions.h5"),
        "lerobot v3.0": str(work / "lerobot"),
    }
    if not (work / "minari" / minari_id).exists():
        convert(args.dataset, sources["minari"], args.dataset_dir)
    for key in ("transitions npz", "transitions h5"):
        if not Path(sources[key]).exists():
            convert(args.dataset, sources[key], args.dataset_dir)
    if not (work / "lerobot/meta/info.json").exists():
        loaded = load_training_data(args.dataset, args.dataset_dir, DataConfig(val_fraction=0.0))
        write_lerobot_v3(loaded.train, work / "lerobot")
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="OGBench singletask name")
    parser.add_argument("--dataset-dir", default="data")
    parser.add_argument("--work", type=Path, required=True, help="folder for the converted copies")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sources = prepare(args)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    results = {}
    for name, source in sources.items():
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", PROBE, source, str(args.dataset_dir)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            runs.append(
                {
                    **json.loads(out.stdout.strip().splitlines()[-1]),
                    "process_seconds": time.perf_counter() - started,
                }
            )
        best = min(runs, key=lambda run: run["seconds"])
        results[name] = {**best, "seconds_all": [round(run["seconds"], 2) for run in runs]}
        print(
            f"{name:16s} {best['transitions']:>9d} transitions  load {best['seconds']:6.2f} s "
            f"(runs {results[name]['seconds_all']})  arrays {best['array_mb']:7.1f} MB  "
            f"peak RSS over the imports' {best['rss_before_mb']:.0f} MB: {best['peak_over_baseline_mb']:7.1f} MB"
        )
    hashes = {result["sha256"] for result in results.values()}
    print(f"content hashes equal across formats: {len(hashes) == 1}")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
