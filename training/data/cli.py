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
    info.add_argument("file", type=Path, nargs="?", help="an OGBench-format .npz file")
    info.add_argument("--tasks", default="1,2,3,4,5", help="singletask ids to relabel for ('' for none)")
    _add_source_arguments(info)

    convert = commands.add_parser(
        "convert", help="write a source's transitions as a Minari dataset or a transitions .npz/.h5 file"
    )
    _add_source_arguments(convert, required=True)
    convert.add_argument(
        "--to",
        required=True,
        help="minari:<dataset id> (written under MINARI_DATASETS_PATH) or out.npz / out.h5",
    )
    convert.add_argument(
        "--split", default="train", choices=("train", "val"), help="OGBench sources: which file to convert"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    return parser


def _add_source_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--dataset",
        required=required,
        help="an OGBench singletask name (with --dataset-dir), minari:<id>, a LeRobot folder or a .npz/.h5 "
        "transitions file (docs/datasets.md)",
    )
    parser.add_argument("--dataset-dir", default="data", help="folder of OGBench files")
    parser.add_argument(
        "--observation-keys", help="comma-separated observation features (LeRobot, Minari Dict spaces)"
    )


def _keys(text: str | None) -> tuple[str, ...] | None:
    return tuple(key.strip() for key in text.split(",") if key.strip()) or None if text else None


def _source_info(args: argparse.Namespace) -> dict:
    """What `--dataset` loads to: provenance, sizes and reward statistics."""
    from training.data.sources import read_source

    loaded = read_source(args.dataset, args.dataset_dir, _keys(args.observation_keys))
    train = loaded.train
    success = train.success_flags
    return {
        **loaded.provenance,
        "eval_env": loaded.eval_env,
        "rewards": {
            "min": float(train.rewards.min()),
            "max": float(train.rewards.max()),
            "mean": float(train.rewards.mean()),
        },
        "success_transition_fraction": float(success.mean()),
        "terminated_fraction": float((train.masks == 0).mean()),
        "action_range": [float(train.actions.min()), float(train.actions.max())],
    }


def _convert(args: argparse.Namespace) -> dict:
    from training.data.convert import convert

    return convert(
        args.dataset, args.to, args.dataset_dir, _keys(args.observation_keys), args.split, args.overwrite
    )


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

    if args.dataset:
        if args.file:
            raise DatasetError("give either a FILE or --dataset, not both")
        return _source_info(args)
    if args.file is None:
        raise DatasetError("mfql-data info needs a FILE (OGBench .npz) or --dataset SOURCE")
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
        commands = {"generate": _generate, "info": _info, "convert": _convert}
        result = commands[args.command](args)
    except (DatasetError, UnknownEnvError, ValueError) as error:
        print(f"mfql-data: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
