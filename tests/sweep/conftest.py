"""Shared fixtures of the sweep tests: tiny generated data, and mfql-train flags that keep runs tiny."""

from __future__ import annotations

from pathlib import Path

import pytest

TASK = "cube-single-play-singletask-task2-v0"
TINY = ["--batch-size", "16", "--mlp-hidden", "32,32", "--critic-hidden", "32,32", "--log-every", "10"]


@pytest.fixture(scope="session")
def sweep_data_dir(two_episode_data_dir) -> Path:
    """The shared 2-episode cube-single dataset (tests/conftest.py), generated once per session."""
    return two_episode_data_dir
