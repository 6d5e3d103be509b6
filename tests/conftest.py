"""Fixtures every test folder shares: a tiny generated dataset (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.collection import CollectionConfig
from training.data.generate import generate_dataset


@pytest.fixture(scope="session")
def two_episode_data_dir(tmp_path_factory) -> Path:
    """A dataset folder with a generated cube-single play dataset of 2 episodes x 30 steps."""
    folder = tmp_path_factory.mktemp("data")
    config = CollectionConfig("cube-single-v0", "play", episode_length=30)
    generate_dataset(config, 2, seed=1, workers=1, out=folder / "cube-single-play-v0.npz", progress=False)
    return folder
