"""A sweep on Ray Tune: connect to Ray, run (or restore) the grid's trials, read their results.

Each `mfql-sweep` call that trains is one Tune experiment, a round, under `<out>/tune/round<N>`
(Tune's storage: trial results and checkpoints; on several nodes it must be shared storage).
`--resume` restores the newest round when it holds the same grid (Tune then runs only the
trials that did not finish, each from its last checkpoint); for another grid it starts a new
round whose trials keep the runs their folders show finished and continue stopped ones.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from filelock import FileLock, Timeout
from ray import tune

from training.sweep.tables import Curve

ROUND_PREFIX = "round"
GRID_FILE = "grid.json"
LOCK_FILE = ".sweep.lock"
OWNER_FILE = ".sweep.owner"  # who holds the lock, for the message a second sweep prints


@dataclass(frozen=True)
class Grid:
    """The trials of a sweep: every (task, arm, seed), and what every trial shares."""

    tasks: list[str]
    arms: list[str]
    seeds: list[int]
    shared: dict  # trainable.train_trial's config["sweep"]


@dataclass(frozen=True)
class Placement:
    """Where trials run: resources per trial, trials at once, retries of a trial that dies."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    jobs: int | None = None
    max_failures: int = 2


class SweepBusy(RuntimeError):
    """Another `mfql-sweep` is training into the same storage."""


@contextmanager
def sweep_lock(storage: Path) -> Iterator[None]:
    """Hold `storage` for one training sweep. Two sweeps into one `--out` would number their
    rounds alike and write the same run folders; the second is refused before Ray starts. The
    lock (filelock, which Ray already depends on) goes with the process, also when it is killed."""
    storage.mkdir(parents=True, exist_ok=True)
    lock = FileLock(storage / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = storage / OWNER_FILE
        held_by = owner.read_text().strip() if owner.is_file() else "an unknown process"
        raise SweepBusy(
            f"another mfql-sweep is training into {storage.parent} ({held_by}); wait for it to end, "
            "stop it (Ctrl+C keeps its checkpoints; `--resume` continues), or give this sweep another --out"
        ) from None
    try:
        (storage / OWNER_FILE).write_text(
            f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n"
        )
        yield
    finally:
        (storage / OWNER_FILE).unlink(missing_ok=True)
        lock.release()


def local_cpus(placement: Placement) -> int | None:
    """The CPUs a local Ray instance gets: `jobs` trials' worth when `--jobs` caps them, else all.

    Tune's `max_concurrent_trials` is stored with a round and `Tuner.restore` keeps it (Ray
    does not let a restore change the experiment's spec), so a round started with `--jobs 2`
    and resumed with `--jobs 1` would still run two trials at once. Giving Ray only the CPUs
    of `jobs` trials caps a restored round as well as a new one.
    """
    if placement.jobs is None:
        return None
    return max(1, math.ceil(placement.jobs * placement.cpus_per_trial))


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for one sweep: a local instance whose session folder is removed afterwards (Ray's
    default temp dir keeps one per `ray.init`), with `num_cpus` CPUs (None: the machine's), or
    the cluster at `address` (its own resources)."""
    # The tune extra has no dashboard; progress bars of parallel trials only garble the log.
    settings = {"runtime_env": {"env_vars": {"TQDM_DISABLE": "1"}}, "log_to_driver": True}
    temp = None
    if address is None:
        temp = tempfile.mkdtemp(prefix="mfql-ray-")  # short: Ray's socket paths must fit 107 bytes
        ray.init(include_dashboard=False, _temp_dir=temp, num_cpus=num_cpus, **settings)
    else:
        ray.init(address=address, **settings)
    try:
        yield
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def trial_name(trial) -> str:
    config = trial.config
    return "-".join(part for part in (config["task"], config["arm"], f"seed{config['seed']}") if part)


def rounds(storage: Path) -> list[Path]:
    """The rounds under `storage`, oldest first, as absolute paths (Tune reads a relative one as a
    URI without a scheme and refuses to restore it)."""
    storage = Path(storage).resolve()
    found = [p for p in storage.glob(f"{ROUND_PREFIX}*") if p.name[len(ROUND_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(ROUND_PREFIX) :]))


def describe_grid(grid: Grid) -> dict:
    """What makes two rounds the same grid: the trials and everything they train with (not
    whether a new round would keep finished runs: `--resume` itself sets that)."""
    described = json.loads(json.dumps(asdict(grid)))
    described["shared"].pop("keep_finished")
    return described


def restorable_round(storage: Path, grid: Grid) -> Path | None:
    """The newest round, if it ran this very grid and Tune can restore it."""
    found = rounds(storage)
    if not found or not tune.Tuner.can_restore(str(found[-1])):
        return None
    stored = found[-1] / GRID_FILE
    if not stored.is_file() or json.loads(stored.read_text()) != describe_grid(grid):
        return None
    return found[-1]


def run_grid(
    trainable: Callable, grid: Grid, placement: Placement, storage: Path, resume: bool
) -> tune.ResultGrid:
    """Fit the grid's trials (restoring the newest round where `resume` allows); their results."""
    resources = {"cpu": placement.cpus_per_trial, "gpu": placement.gpus_per_trial}
    wrapped = tune.with_resources(trainable, resources)
    restore = restorable_round(storage, grid) if resume else None
    if restore is not None:
        print(f"mfql-sweep: restoring {restore}: only trials that did not finish run", file=sys.stderr)
        return tune.Tuner.restore(str(restore), trainable=wrapped, resume_errored=True).fit()
    found = rounds(storage)
    name = f"{ROUND_PREFIX}{int(found[-1].name[len(ROUND_PREFIX) :]) + 1 if found else 1}"
    (storage / name).mkdir(parents=True, exist_ok=True)
    (storage / name / GRID_FILE).write_text(json.dumps(describe_grid(grid), indent=2))
    tuner = tune.Tuner(
        wrapped,
        param_space={
            "task": tune.grid_search(grid.tasks),
            "arm": tune.grid_search(grid.arms),
            "seed": tune.grid_search(grid.seeds),
            "sweep": grid.shared,
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=placement.jobs,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage.resolve()),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=placement.max_failures),
            verbose=1,
        ),
    )
    return tuner.fit()


def tune_curve(result: tune.Result) -> Curve:
    """The evaluations a trial reported, one point per step (a restarted trial repeats some)."""
    frame = result.metrics_dataframe
    if frame is None or "eval/success_rate" not in frame:
        return []
    points = {}
    for record in frame.to_dict("records"):
        if record.get("eval/success_rate") == record.get("eval/success_rate"):  # not NaN
            point = {
                "step": int(record["step"]),
                **{
                    k: float(record[f"eval/{k}"])
                    for k in ("success_rate", "success_rate_stderr", "mean_return")
                },
            }
            episodes = record.get("eval/episodes")  # absent (or NaN) in an older sweep's rounds
            if episodes is not None and episodes == episodes:
                point["episodes"] = int(episodes)
            points[point["step"]] = point
    return [points[step] for step in sorted(points)]


def collect_results(results: tune.ResultGrid) -> tuple[dict[str, list[dict]], dict[tuple, Curve]]:
    """Rows by task of the trials that finished, and their curves by (task, arm, seed)."""
    rows: dict[str, list[dict]] = {}
    curves = {}
    for result in results:
        config = result.config
        if result.error is not None or "final" not in (result.metrics or {}):
            error = f": {result.error}" if result.error is not None else " (stopped)"
            print(f"mfql-sweep: trial {Path(result.path).name} did not finish{error}", file=sys.stderr)
            continue
        rows.setdefault(config["task"], []).append(result.metrics["final"])
        curves[(config["task"], config["arm"], config["seed"])] = tune_curve(result)
    return rows, curves


def auth_hint() -> str:
    mode = os.environ.get("RAY_AUTH_MODE", "token (the default)")
    return (
        f"RAY_AUTH_MODE is {mode}: a cluster started with token authentication needs its token here "
        "(RAY_AUTH_TOKEN, or ~/.ray/auth_token copied from the head node); see docs/sweeps.md"
    )
