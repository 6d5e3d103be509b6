"""Shared fixtures of the sweep tests: tiny generated data, and mfql-train flags that keep runs tiny."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.collection import CollectionConfig
from training.data.generate import generate_dataset

TASK = "cube-single-play-singletask-task2-v0"
TINY = ["--batch-size", "16", "--mlp-hidden", "32,32", "--critic-hidden", "32,32", "--log-every", "10"]


@pytest.fixture(scope="session")
def sweep_data_dir(tmp_path_factory) -> Path:
    """A dataset folder with a generated cube-single play dataset of 2 episodes x 30 steps."""
    folder = tmp_path_factory.mktemp("sweep-data")
    config = CollectionConfig("cube-single-v0", "play", episode_length=30)
    generate_dataset(config, 2, seed=1, workers=1, out=folder / "cube-single-play-v0.npz", progress=False)
    return folder
