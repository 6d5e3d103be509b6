"""`mfql-data`: generate OGBench-format datasets with the scripted oracles, and describe files."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from training.data.collection import CollectionConfig
from training.data.env_families import DATASET_TYPES, ENV_FAMILIES
from training.data.errors import DatasetError, UnknownEnvError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfql-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="collect a dataset (train file + '-val' file)")
    generate.add_argument("--env", required=True, help=f"data-collection env, one of {sorted(ENV_FAMILIES)}")
    generate.add_argument(
        "--type", default="play", choices=DATASET_TYPES, help="play: plan oracles; noisy: Markov"
    )
    generate.add_argument(
        "--episodes", type=int, default=1000, help="train episodes (val gets episodes // 10)"
    )
    generate.add_argument(
        "--out", type=Path, required=True, help="train file, e.g. data/cube-single-play-v0.npz"
    )
    generate.add_argument(
        "--seed", type=int, default=0, help="same seed, byte-identical files (on the same CPU model)"
    )
    generate.add_argument(
        "--workers", type=int, default=1, help="parallel processes (results do not depend on it)"
    )
    generate.add_argument("--episode-length", type=int, default=1001, help="rows per episode (OGBench: 1001)")
    generate.add_argument("--overwrite", action="store_true", help="replace existing files")
    generate.add_argument("--no-progress", action="store_true")

    info = commands.add_parser("info", help="print sizes, dims, episodes and per-task reward statistics")
    info.add_argument("file", type=Path)
    info.add_argument("--tasks", default="1,2,3,4,5", help="singletask ids to relabel for ('' for none)")
    return parser


def _generate(args: argparse.Namespace) -> dict:
    from training.data.generate import generate_dataset
    from training.data.task_names import validation_path

    out = args.out.expanduser()
    val = validation_path(out)
    existing = [str(p) for p in (out, val) if p.exists()]
    if existing and not args.overwrite:
        raise DatasetError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    config = CollectionConfig(env_name=args.env, dataset_type=args.type, episode_length=args.episode_length)
    start = time.monotonic()
    train_path, val_path = generate_dataset(
        config, args.episodes, args.seed, args.workers, out, progress=not args.no_progress
    )
    return {"train": str(train_path), "val": str(val_path), "seconds": round(time.monotonic() - start, 1)}


def _info(args: argparse.Namespace) -> dict:
    from training.data.generate import silence_harmless_env_warnings
    from training.data.summary import collection_env_of, file_summary, task_statistics

    if not args.file.is_file():
        raise DatasetError(f"{args.file}: no such file")
    summary = file_summary(args.file)
    env = collection_env_of(args.file)
    task_ids = [int(t) for t in args.tasks.split(",") if t.strip()]
    if env and task_ids:
        summary["collection_env"] = env
        with warnings.catch_warnings():  # relabelling builds the env, as collection does
            silence_harmless_env_warnings()
            summary["tasks"] = task_statistics(args.file, env, task_ids)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = _generate(args) if args.command == "generate" else _info(args)
    except (DatasetError, UnknownEnvError, ValueError) as error:
        print(f"mfql-data: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
