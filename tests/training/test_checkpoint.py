"""Checkpoints: round trip, exact resume, atomic writes and clear errors for corrupt files."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from training.agents.mfql import MFQLAgent
from training.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_policy_checkpoint,
    resolve_checkpoint,
)
from training.config import AgentConfig, NetworkConfig, TrainConfig
from training.inference import load_serving_policy
from training.replay_buffer import ReplayBuffer
from training.training_state import restore_training_state, save_training_state

TINY = NetworkConfig(policy="mlp", mlp_hidden=(32, 32), critic_hidden=(32, 32))


def _dataset(n: int = 500, obs_dim: int = 6, action_dim: int = 2):
    rng = np.random.default_rng(0)
    return types.SimpleNamespace(
        size=n,
        observations=rng.normal(size=(n, obs_dim)) * 3 + 1,
        actions=rng.uniform(-1, 1, size=(n, action_dim)),
        rewards=-rng.integers(0, 2, size=n).astype(float),
        masks=np.ones(n),
        next_observations=rng.normal(size=(n, obs_dim)),
    )


def _fresh(config: TrainConfig, seed: int = 0):
    data = _dataset()
    agent = MFQLAgent(6, 2, config.agent_config, config.network, config.offline_steps, seed=seed)
    buffer = ReplayBuffer(data, data.observations.mean(0), data.observations.std(0), 0, seed)
    return agent, buffer


def _train(agent, buffer, first: int, last: int) -> list[dict]:
    return [agent.update(buffer.sample(32), step) for step in range(first, last + 1)]


def test_resumed_training_reproduces_the_uninterrupted_losses(tmp_path):
    # The alpha controller acts inside the run: it records every 2 steps from the start, and
    # any change of the MFI loss moves alpha, so the resume at step 6 falls between changes.
    agent_config = AgentConfig(
        alpha_update_interval=2, alpha_warmup_fraction=0.0, alpha_threshold=1.0, actor_warmup_fraction=0.2
    )
    config = TrainConfig(network=TINY, offline_steps=12, agent_config=agent_config)
    agent, buffer = _fresh(config)
    straight = _train(agent, buffer, 1, 12)
    alphas = [info["alpha"] for info in straight]
    assert len(set(alphas[:6])) > 1 and len(set(alphas[6:])) > 1, f"alpha must move on both sides: {alphas}"

    first, first_buffer = _fresh(config)
    _train(first, first_buffer, 1, 6)
    step_dir = save_training_state(tmp_path, 6, config, first, first_buffer, {})
    resumed, resumed_buffer = _fresh(config, seed=123)  # different init: everything must come from disk
    restore_training_state(step_dir, resumed, resumed_buffer, load_policy_checkpoint(step_dir).model)
    assert resumed.alpha_controller.state_dict() == first.alpha_controller.state_dict()
    continued = _train(resumed, resumed_buffer, 7, 12)
    for expected, got in zip(straight[6:], continued, strict=True):
        for key in ("critic/loss", "mfi/loss", "actor/loss", "alpha", "actor/lr"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    assert list(resumed.alpha_controller.history) == pytest.approx(list(agent.alpha_controller.history))


def test_checkpoint_describes_itself_and_builds_the_serving_policy(tmp_path):
    config = TrainConfig(network=TINY, offline_steps=4, env_name="cube-single-play-singletask-task2-v0")
    agent, buffer = _fresh(config)
    _train(agent, buffer, 1, 2)
    save_training_state(tmp_path, 2, config, agent, buffer, {"success_rate": 0.5})
    loaded = load_policy_checkpoint(tmp_path)
    assert loaded.config == config
    assert (loaded.obs_dim, loaded.action_dim, loaded.step) == (6, 2, 2)
    assert loaded.metrics == {"success_rate": 0.5}
    assert torch.allclose(loaded.obs_mean, buffer.mean)
    module, _ = load_serving_policy(tmp_path)
    observation = torch.randn(3, 6)
    noise = torch.randn(3, 4, 2)
    action, q, candidates = module(observation, noise)
    assert action.shape == (3, 2) and q.shape == (3,) and candidates.shape == (3, 4, 2)
    normalised = (observation - buffer.mean) / (buffer.std + 1e-8)
    expected, expected_q = agent.act(normalised, noise=noise.transpose(0, 1))
    assert torch.allclose(action, expected) and torch.allclose(q, expected_q)


def test_old_checkpoints_survive_and_only_the_newest_are_kept(tmp_path):
    config = TrainConfig(network=TINY, offline_steps=10, keep_checkpoints=2)
    agent, buffer = _fresh(config)
    (tmp_path / "checkpoints" / "tmp_step_000000009").mkdir(parents=True)  # debris of a crash
    for step in (1, 2, 3):
        save_training_state(tmp_path, step, config, agent, buffer, {})
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_000000002", "step_000000003"]
    assert resolve_checkpoint(tmp_path).name == "step_000000003"


@pytest.mark.parametrize(
    ("file_name", "damage", "message"),
    [
        ("model.safetensors", lambda b: b[: len(b) // 2], "corrupt safetensors"),
        ("model.safetensors", lambda b: b"not a tensor file", "corrupt safetensors"),
        ("config.json", lambda b: b"{ broken", "corrupt JSON"),
        (
            "config.json",
            lambda b: json.dumps({**json.loads(b), "format_version": 99}).encode(),
            "format_version 99",
        ),
    ],
)
def test_corrupt_checkpoint_is_reported_with_the_file_and_problem(tmp_path, file_name, damage, message):
    config = TrainConfig(network=TINY, offline_steps=4)
    agent, buffer = _fresh(config)
    step_dir = save_training_state(tmp_path, 1, config, agent, buffer, {})
    target = step_dir / file_name
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(CheckpointError) as error:
        load_policy_checkpoint(tmp_path)
    assert file_name in str(error.value) and message in str(error.value)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoint(tmp_path / "absent")


def test_weights_that_do_not_match_the_config_are_rejected(tmp_path):
    config = TrainConfig(network=TINY, offline_steps=4)
    agent, buffer = _fresh(config)
    step_dir = save_training_state(tmp_path, 1, config, agent, buffer, {})
    description = json.loads((step_dir / "config.json").read_text())
    description["config"]["network"]["mlp_hidden"] = [64, 64]
    (step_dir / "config.json").write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match="do not match"):
        load_serving_policy(step_dir)
