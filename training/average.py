"""Checkpoint averaging: one model whose weights are the mean of several checkpoints', and `mfql-average`.

Beyond the paper (docs/training.md, "Averaging checkpoints"): the uniform average of the
weights of a run's last few checkpoints (Izmailov et al. 2018, "Averaging Weights Leads to
Wider Optima and Better Generalization"; fairseq's `average_checkpoints`), taken after
training, so it needs no retraining and no choice made before the run. On puzzle-3x3 task2 a
`--agent bon` run's success swung from checkpoint to checkpoint with its generator, not its
critic; the average of three checkpoints acted about as well as the three on average, with
less spread (docs/results/best-of-n.md, round 6).

    mfql-average runs/bon --last 3 --out runs/bon-avg     # then mfql-eval / mfql-export runs/bon-avg

The result is a step directory (config.json and model.safetensors, no optimiser state: it is
for evaluation and export, not for resuming) with the newest checkpoint's config and step.
Its metrics hold only `averaged_steps`: the newest checkpoint's evaluation is not the
average's, so an export of it reports no success rate until it is evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from training.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    PolicyCheckpoint,
    describe_checkpoint,
    list_checkpoints,
    load_policy_checkpoint,
    step_of,
)

NORMALIZER_PREFIX = "normalizer."


def select_checkpoints(run_dir: Path, last: int | None = None, steps: list[int] | None = None) -> list[Path]:
    """The step directories of `run_dir` to average: its newest `last`, or the given `steps`."""
    available = {step_of(path): path for path in list_checkpoints(run_dir)}
    if not available:
        raise CheckpointError(f"{run_dir}: no checkpoints (expected checkpoints/step_*/ of a run)")
    if steps:
        missing = sorted(set(steps) - set(available))
        if missing:
            raise CheckpointError(
                f"{run_dir}: no checkpoint at step(s) {missing}; it has {sorted(available)}"
            )
        return [available[step] for step in sorted(set(steps))]
    count = last or len(available)
    if count > len(available):
        raise CheckpointError(
            f"{run_dir}: --last {count} asks for more checkpoints than the {len(available)} kept"
        )
    return [available[step] for step in sorted(available)[-count:]]


def _identity(checkpoint: PolicyCheckpoint) -> tuple[int, int, str]:
    return checkpoint.obs_dim, checkpoint.action_dim, checkpoint.config.agent


def _same_model(first: PolicyCheckpoint, other: PolicyCheckpoint) -> None:
    """Checkpoints averaged together must be one model: same shapes, networks and observation statistics."""
    if _identity(first) != _identity(other):
        raise CheckpointError(
            f"{other.path}: (obs_dim, action_dim, agent) {_identity(other)} differs from "
            f"{first.path}'s {_identity(first)}"
        )
    if first.config.network != other.config.network or first.model.keys() != other.model.keys():
        raise CheckpointError(f"{other.path}: its networks differ from {first.path}'s")
    for key, value in first.model.items():
        if value.shape != other.model[key].shape:
            raise CheckpointError(
                f"{other.path}: {key} has shape {tuple(other.model[key].shape)}, {first.path} {tuple(value.shape)}"
            )
        if key.startswith(NORMALIZER_PREFIX) and not torch.equal(value, other.model[key]):
            raise CheckpointError(
                f"{other.path}: {key} differs from {first.path}'s: average checkpoints of one run (one dataset)"
            )


def average_weights(checkpoints: list[PolicyCheckpoint]) -> dict[str, Tensor]:
    """The element-wise mean of every network tensor; the (identical) observation statistics as they are."""
    first = checkpoints[0]
    for other in checkpoints[1:]:
        _same_model(first, other)
    averaged = {}
    for key, value in first.model.items():
        if key.startswith(NORMALIZER_PREFIX) or not value.is_floating_point():
            averaged[key] = value.clone()
        else:
            stacked = torch.stack([checkpoint.model[key].double() for checkpoint in checkpoints])
            averaged[key] = stacked.mean(dim=0).to(value.dtype)
    return averaged


def _is_average(path: Path) -> bool:
    """Whether `path` is a step directory this tool wrote (its description names what it averaged)."""
    try:
        return "averaged_from" in json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


def write_averaged(checkpoints: list[PolicyCheckpoint], out: Path) -> Path:
    """Write the average of `checkpoints` as a step directory at `out` (atomically); return it."""
    newest = max(checkpoints, key=lambda checkpoint: checkpoint.step)
    out = Path(out)
    if out.exists() and not _is_average(out):
        raise CheckpointError(
            f"{out}: exists and is not an average that mfql-average wrote (only those are replaced); "
            "choose another --out"
        )
    model = average_weights(checkpoints)
    tmp = out.with_name(f"tmp_{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in model.items()}, str(tmp / MODEL_FILE))
    metrics = {"averaged_steps": sorted(checkpoint.step for checkpoint in checkpoints)}
    description = describe_checkpoint(
        newest.step, newest.config, newest.obs_dim, newest.action_dim, metrics, newest.dataset
    )
    description["averaged_from"] = [str(checkpoint.path) for checkpoint in checkpoints]
    (tmp / CONFIG_FILE).write_text(json.dumps(description, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def step_list(text: str) -> list[int]:
    """`--steps 65000,70000,75000` -> [65000, 70000, 75000]."""
    return [int(value) for value in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfql-average", description="Average the weights of a run's checkpoints into one model."
    )
    parser.add_argument("run", type=Path, help="a run directory (its checkpoints/step_*/)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, help="average the newest N checkpoints (default: all kept)")
    which.add_argument("--steps", type=step_list, help="e.g. 65000,70000,75000")
    parser.add_argument("--out", type=Path, required=True, help="the step directory to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.last is not None and args.last < 1:
        print(f"mfql-average: --last must be at least 1; got {args.last}", file=sys.stderr)
        return 2
    if args.out.resolve().parent == (args.run / "checkpoints").resolve():
        print(
            f"mfql-average: --out {args.out} is inside the run's checkpoints/, where training and "
            "--resume look for its own steps; write the average elsewhere",
            file=sys.stderr,
        )
        return 2
    try:
        paths = select_checkpoints(args.run, args.last, args.steps)
        out = write_averaged([load_policy_checkpoint(path) for path in paths], args.out)
    except CheckpointError as exc:
        print(f"mfql-average: {exc}", file=sys.stderr)
        return 2
    steps = ", ".join(path.name for path in paths)
    print(f"mfql-average: {out} = mean of {len(paths)} checkpoints ({steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
