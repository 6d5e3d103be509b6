"""`--observation-normalization none`: the networks see observations as they are (a study option)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.training.test_also_eval import _train
from training.checkpoint import load_policy_checkpoint
from training.data.dataset import make_dataset, normalization_statistics, observation_statistics
from training.data.sources import DataConfig
from training.inference import serving_policy_from_checkpoint


def test_statistics_by_kind():
    observations = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]], dtype=np.float32)
    dataset = make_dataset(
        "built", observations, np.zeros((3, 1)), np.zeros(3), np.ones(3), np.array([0, 0, 1]), observations
    )
    mean, std = normalization_statistics(dataset)
    assert np.allclose(mean, [2.0, 5.0]) and np.allclose(std, [np.sqrt(8 / 3), 1.0])  # constant: std 1
    assert all(
        np.array_equal(a, b) for a, b in zip((mean, std), observation_statistics(dataset), strict=True)
    )
    mean, std = normalization_statistics(dataset, "none")
    assert mean.tolist() == [0.0, 0.0] and std.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="'mean-std' or 'none'; got 'minmax'"):
        normalization_statistics(dataset, "minmax")
    with pytest.raises(ValueError, match=r"observation_normalization must be one of \['mean-std', 'none'\]"):
        DataConfig(observation_normalization="minmax")


def test_a_run_on_raw_observations_keeps_them_raw_through_resume(tmp_path, two_episode_data_dir):
    raw, default = tmp_path / "raw", tmp_path / "default"
    flags = ("--observation-normalization", "none", "--eval-episodes", "0", "--checkpoint-every", "3")
    assert _train(raw, two_episode_data_dir, *flags) == 0
    assert _train(default, two_episode_data_dir, "--eval-episodes", "0") == 0
    checkpoint = load_policy_checkpoint(raw)
    assert checkpoint.config.data.observation_normalization == "none"
    assert torch.equal(checkpoint.obs_mean, torch.zeros_like(checkpoint.obs_mean))
    assert torch.equal(checkpoint.obs_std, torch.ones_like(checkpoint.obs_std))
    observation = torch.randn(3, checkpoint.obs_dim)
    assert torch.equal(serving_policy_from_checkpoint(checkpoint).normalizer(observation), observation)
    # the default run normalises with the data's statistics
    assert not torch.equal(load_policy_checkpoint(default).obs_std, checkpoint.obs_std)
    # a run stopped at its step-3 checkpoint resumes on raw observations, whatever the flags say
    shutil.rmtree(raw / "checkpoints" / "step_000000006")
    assert _train(raw, two_episode_data_dir, "--eval-episodes", "0", "--resume") == 0
    resumed = load_policy_checkpoint(raw)
    assert resumed.step == 6 and resumed.config.data.observation_normalization == "none"
    assert torch.equal(resumed.obs_std, checkpoint.obs_std)
