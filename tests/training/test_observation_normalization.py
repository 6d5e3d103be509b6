"""`--observation-normalization none`: the networks see observations as they are (a study option)."""

from __future__ import annotations

import json
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


def test_a_raw_run_records_the_datas_scale_and_export_tests_its_graph_there(tmp_path, two_episode_data_dir):
    """The normaliser is (0, 1), so the run records the data's statistics, and export's self-test
    draws its observations at that scale (N(0, 1) inputs are far from a raw dataset's)."""
    from exporters.export import SELFTEST_BATCH, ExportOptions, export_bundle, load_module, selftest_cases

    run = tmp_path / "raw"
    assert (
        _train(run, two_episode_data_dir, "--observation-normalization", "none", "--eval-episodes", "0") == 0
    )
    checkpoint = load_policy_checkpoint(run)
    config = checkpoint.config
    from training.data.sources import load_training_data

    train = load_training_data(config.env_name, config.dataset_dir, config.data).train
    mean, std = observation_statistics(train)
    scale = checkpoint.dataset["observation_scale"]
    assert np.allclose(scale["mean"], mean) and np.allclose(scale["std"], std)
    module, _ = load_module(run)
    (case,) = selftest_cases(module, checkpoint, [2])
    draws = np.random.default_rng(0).standard_normal((SELFTEST_BATCH, checkpoint.obs_dim))
    assert np.allclose(case.observation, (mean + std * draws).astype(np.float32))
    bundle = export_bundle(run, ExportOptions(out=tmp_path / "bundle", formats=("onnx",)))
    assert bundle.metadata["data"]["observation_scale"]["std"] == scale["std"]
    written = json.loads((bundle.bundle_dir / "metadata.json").read_text())
    assert written["data"]["observation_scale"] == scale
