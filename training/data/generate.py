"""A whole dataset: seeded episodes, collected in parallel, written as OGBench train/val files."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data.collection import CollectionConfig, EpisodeCollector
from training.data.npz_files import write_npz_atomically
from training.data.task_names import validation_path

SPLITS = ("train", "val")


@dataclass(frozen=True)
class EpisodeJob:
    split: str  # 'train' or 'val'
    index: int  # episode index within its split
    base_seed: int  # the --seed of the whole dataset

    def seeds(self) -> tuple[int, int]:
        """(env seed, oracle seed), a function of (base seed, split, index) only."""
        sequence = np.random.SeedSequence((self.base_seed, SPLITS.index(self.split), self.index))
        env_seed, oracle_seed = sequence.generate_state(2)
        return int(env_seed), int(oracle_seed)


def validation_episodes(train_episodes: int) -> int:
    """OGBench collects num_episodes // 10 validation episodes; we keep at least one."""
    return max(1, train_episodes // 10)


def silence_harmless_env_warnings() -> None:
    """Hide the two warnings that building an ogbench env prints on a headless machine, and only those.

    - GLFW's "DISPLAY environment variable is missing": dm_control (imported by ogbench) starts
      GLFW when it is imported, whether or not anything renders; collection and relabelling
      never render.
    - gymnasium's "Box low's / high's precision lowered by casting to float32": ogbench builds
      its action space from float64 bounds of +-1, which float32 holds exactly.
    Every other warning (a broken display that is set, an env's own warnings) still shows.
    """
    warnings.filterwarnings(
        "ignore", message=r".*The DISPLAY environment variable is missing", category=UserWarning
    )
    warnings.filterwarnings(
        "ignore", message=r".*Box (low|high)'s precision lowered by casting to float32", category=UserWarning
    )


_worker_collector: EpisodeCollector | None = None  # one per pool process, built by _start_worker


def _start_worker(config: CollectionConfig) -> None:
    global _worker_collector
    silence_harmless_env_warnings()  # a spawned process starts with the default filters
    _worker_collector = EpisodeCollector(config)


def _collect_in_worker(job: EpisodeJob) -> dict[str, np.ndarray]:
    return _worker_collector.collect(*job.seeds())


def _collect_all(config: CollectionConfig, jobs: list[EpisodeJob], workers: int) -> Iterator[dict]:
    """Episodes in job order, whatever the number of workers."""
    if workers == 1:
        collector = EpisodeCollector(config)
        try:
            for job in jobs:
                yield collector.collect(*job.seeds())
        finally:
            collector.close()
        return
    # spawn, not fork: the parent may hold MuJoCo or torch state that a fork would copy half-alive.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(config,)) as pool:
        yield from pool.imap(_collect_in_worker, jobs, chunksize=1)


def _concatenate(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([episode[key] for episode in episodes]) for key in episodes[0]}


def generate_dataset(
    config: CollectionConfig, episodes: int, seed: int, workers: int, out: Path, progress: bool = True
) -> tuple[Path, Path]:
    """Write `out` (train) and its '-val.npz' sibling; return both paths."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1; got {episodes}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    val_out = validation_path(out)
    counts = {"train": episodes, "val": validation_episodes(episodes)}
    jobs = [EpisodeJob(split, index, seed) for split in SPLITS for index in range(counts[split])]
    collected: dict[str, list[dict[str, np.ndarray]]] = {split: [] for split in SPLITS}
    bar = tqdm(
        total=len(jobs), desc=f"{config.env_name} {config.dataset_type}", unit="ep", disable=not progress
    )
    with bar, warnings.catch_warnings():  # the filters apply to this collection only
        silence_harmless_env_warnings()
        for job, episode in zip(jobs, _collect_all(config, jobs, min(workers, len(jobs))), strict=True):
            collected[job.split].append(episode)
            bar.update(1)
    write_npz_atomically(out, _concatenate(collected["train"]))
    write_npz_atomically(val_out, _concatenate(collected["val"]))
    return out, val_out
