"""`mfql-replay RECORDING --model NAME[:VERSION]`: re-run recorded steps on another model version.

    mfql-replay records/rest-robot7/ --model cube-single:3 --model-repository models/
    python -m server.replay records/ --model cube-single           # the newest version

Every step of the recordings (`--record-dir` files, or directories of them) is run again
with its recorded observation, seed and K on the named version, straight through its runtime
(no server needed), and the report says how the policy's choice differs: the best-of-K
action and its Q, every candidate and its Q, and how often the best candidate's index
changed. What a team checks before promoting a version. A session's hand-over and limits
depend on its history, so the comparison is of the policy's own choice (`policy_candidate`),
not of the served action after them. The bundle is verified as the server verifies it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from server.bundle_loader import read_bundle
from server.errors import BundleError
from server.noise import request_noise
from server.recording import RECORD_SUFFIX, read_recording
from server.repository import VERSION_PATTERN
from server.runner import load_runtime
from server.settings import ServerSettings


def recording_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.rglob(f"*{RECORD_SUFFIX}"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"recording {path} does not exist")
    if not files:
        raise FileNotFoundError(f"no {RECORD_SUFFIX} recordings under {', '.join(map(str, paths))}")
    return files


def bundle_path(repository: Path, model: str) -> tuple[str, int, Path]:
    """NAME[:VERSION] in `repository` -> (name, version, directory); the newest version when none is named."""
    name, _, version = model.partition(":")
    folder = repository / name
    versions = sorted(int(p.name) for p in folder.glob("*") if p.is_dir() and VERSION_PATTERN.match(p.name))
    if not versions:
        raise FileNotFoundError(f"model {name!r} has no version under {folder}")
    chosen = int(version) if version else versions[-1]
    if chosen not in versions:
        raise FileNotFoundError(f"model {name!r} has versions {versions}, not {chosen}")
    return name, chosen, folder / str(chosen)


def replay_step(runtime, step: dict, chunk_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate [K, *chunk] and its Q [K] for a recorded step, as the server's `act_scored` computes them."""
    k = int(step["num_candidates"])
    observation = np.asarray(step["observation.state"], np.float32)[None]
    noise = request_noise(int(step["seed"]), 1, k, chunk_shape).reshape(k, 1, *chunk_shape)
    outputs = runtime(np.repeat(observation, k, axis=0), noise)
    return outputs["candidates"].reshape(k, *chunk_shape), outputs["q_value"].reshape(k)


def compare(steps: list[dict], runtime, chunk_shape: tuple[int, ...], obs_dim: int) -> dict:
    action_diff, q_diff, candidate_diff, candidate_q_diff = [], [], [], []
    changed = skipped = 0
    for step in steps:
        if len(step["observation.state"]) != obs_dim:
            skipped += 1
            continue
        candidates, q_values = replay_step(runtime, step, chunk_shape)
        recorded = np.asarray(step["candidates"], np.float32).reshape(candidates.shape)
        recorded_q = np.asarray(step["candidate_q_values"], np.float32)
        old, new = int(step["policy_candidate"]), int(np.argmax(q_values))
        changed += int(old != new)
        action_diff.append(float(np.abs(candidates[new] - recorded[old]).max()))
        q_diff.append(float(q_values[new] - recorded_q[old]))
        candidate_diff.append(float(np.abs(candidates - recorded).max()))
        candidate_q_diff.append(float(np.abs(q_values - recorded_q).max()))
    compared = len(action_diff)
    return {
        "steps": compared,
        "skipped_other_obs_dim": skipped,
        "best_candidate_changed": changed,
        "best_candidate_changed_fraction": changed / compared if compared else None,
        "action_abs_diff": _summary(action_diff),
        "q_value_diff": _summary(q_diff),
        "candidate_abs_diff_max": max(candidate_diff, default=None),
        "candidate_q_abs_diff_max": max(candidate_q_diff, default=None),
    }


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    array = np.asarray(values)
    return {"mean": float(array.mean()), "max": float(np.abs(array).max())}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfql-replay", description=__doc__.splitlines()[0])
    parser.add_argument("recordings", type=Path, nargs="+", help="recorded episode files or directories")
    parser.add_argument("--model", required=True, help="NAME or NAME:VERSION to replay on")
    parser.add_argument(
        "--model-repository", type=Path, default=None, help="default: the embedded server/default_model/"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ServerSettings(model_repository=args.model_repository)
    try:
        files = recording_files(args.recordings)
        name, version, path = bundle_path(settings.repository_path, args.model)
        bundle = read_bundle(path)
        runtime = load_runtime(bundle, settings)
    except (FileNotFoundError, ValueError, BundleError) as exc:
        print(f"mfql-replay: {exc}", file=sys.stderr)
        return 2
    meta = bundle.metadata
    steps = [step for file in files for step in read_recording(file)]
    recorded_versions = sorted({f"{s['model']}:{s['version']}" for s in steps})
    report = {
        "model": name,
        "version": version,
        "recordings": len(files),
        "recorded_on": recorded_versions,
        **compare(steps, runtime, meta.chunk_shape, meta.obs_dim),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
