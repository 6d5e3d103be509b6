"""What running a study on Ray Tune costs: a trial's training steps/s against the same run by hand.

Each round trains one run of the study's size (the `lr-constant` arm: MLP 4x256 policy and
critics, batch 256) twice, one after the other: by hand (`mfql-train`, one thread) and as the
single trial of an `mfql-sweep` on this machine (1 CPU, one thread). Rounds alternate which
goes first, so a neighbour's load drifting in time spreads over both. Per run it reports the
trainer's own steps/s (the harmonic mean of `metrics.csv`'s `time/steps_per_s`: sampling and
update, evaluations and checkpoints excluded) and the wall-clock seconds of the whole command
(the sweep's include starting Ray and the trial's process). Prints JSON and a table.

    python benchmarks/sweep_overhead.py --steps 400 --rounds 2

Without `--dataset-dir` it generates a small cube-single play dataset (a temporary folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASK = "cube-single-play-singletask-task2-v0"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def steps_per_second(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return statistics.harmonic_mean(float(row["time/steps_per_s"]) for row in csv.DictReader(handle))


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def by_hand(data: Path, out: Path, steps: int) -> dict:
    from training.sweep.arms import ARMS, BASE

    run_dir = out / "by-hand"
    command = [sys.executable, "-m", "training.train", "--env", TASK, "--dataset-dir", str(data)]
    command += ["--out", str(run_dir), "--steps", str(steps), "--eval-episodes", "0", "--threads", "1"]
    command += ["--log-every", "50", "--overwrite", *BASE, *ARMS["lr-constant"][1]]
    seconds = timed(command)
    return {"steps_per_s": steps_per_second(run_dir), "wall_seconds": seconds}


def as_trial(data: Path, out: Path, steps: int) -> dict:
    sweep = out / "sweep"
    command = [sys.executable, "-m", "training.sweep.cli", "--dataset-dir", str(data), "--out", str(sweep)]
    command += ["--steps", str(steps), "--eval-every", "0", "--eval-episodes", "1", "--arms", "lr-constant"]
    command += ["--cpus-per-trial", "1", "--threads", "1", "--", "--log-every", "50"]
    seconds = timed(command)
    return {"steps_per_s": steps_per_second(sweep / "lr-constant-seed0"), "wall_seconds": seconds}


def dataset(folder: Path | None, scratch: Path) -> Path:
    if folder is not None:
        return folder
    from training.data.collection import CollectionConfig
    from training.data.generate import generate_dataset

    config = CollectionConfig("cube-single-v0", "play", episode_length=200)
    generate_dataset(config, 10, seed=0, workers=1, out=scratch / "cube-single-play-v0.npz", progress=False)
    return scratch


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset-dir", type=Path, help="default: generate a small dataset")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="mfql-sweep-overhead-") as scratch:
        data = dataset(args.dataset_dir, Path(scratch))
        for index in range(args.rounds):
            order = (("by_hand", by_hand), ("trial", as_trial))[:: 1 if index % 2 == 0 else -1]
            rounds.append({name: run(data, Path(scratch), args.steps) for name, run in order})
    ratios = [r["trial"]["steps_per_s"] / r["by_hand"]["steps_per_s"] for r in rounds]
    report = {"steps": args.steps, "rounds": rounds, "trial_over_by_hand": ratios}
    report["median_ratio"] = statistics.median(ratios)
    print(json.dumps(report, indent=2))
    print("\n| round | by hand steps/s | trial steps/s | ratio | by hand wall s | sweep wall s |")
    print("|---|---|---|---|---|---|")
    for index, (r, ratio) in enumerate(zip(rounds, ratios, strict=True)):
        hand, trial = r["by_hand"], r["trial"]
        print(
            f"| {index} | {hand['steps_per_s']:.2f} | {trial['steps_per_s']:.2f} | {ratio:.3f} "
            f"| {hand['wall_seconds']:.0f} | {trial['wall_seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
