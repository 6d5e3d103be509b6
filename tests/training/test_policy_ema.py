"""`policy_ema_rate`: an EMA of the policy's weights acts (eval, export, serving); training is unchanged."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from training.agents.fql import FQLAgent
from training.agents.mfql import MFQLAgent
from training.checkpoint import CheckpointError, load_policy_checkpoint
from training.config import AgentConfig, NetworkConfig, TrainConfig
from training.inference import load_serving_policy
from training.replay_buffer import ReplayBuffer
from training.training_state import restore_training_state, save_training_state

TINY = NetworkConfig(policy="mlp", mlp_hidden=(32, 32), critic_hidden=(32, 32))
RATE = 0.25


def _buffer(seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    n, obs_dim, action_dim = 300, 6, 2
    data = types.SimpleNamespace(
        size=n,
        observations=rng.normal(size=(n, obs_dim)),
        actions=rng.uniform(-1, 1, size=(n, action_dim)),
        rewards=-rng.integers(0, 2, size=n).astype(float),
        masks=np.ones(n),
        next_observations=rng.normal(size=(n, obs_dim)),
    )
    return ReplayBuffer(data, data.observations.mean(0), data.observations.std(0), 0, seed)


def _agent(cls, rate: float, seed: int = 0):
    return cls(6, 2, AgentConfig(policy_ema_rate=rate), TINY, 10, seed=seed)


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("cls", [MFQLAgent, FQLAgent])
def test_rate_zero_is_the_papers_setting_the_trained_policy_acts(cls):
    agent = _agent(cls, 0.0)
    assert agent.acting_policy is agent.policy
    assert "acting_policy" not in agent.modules()


@pytest.mark.parametrize("cls", [MFQLAgent, FQLAgent])
def test_acting_weights_are_the_ema_of_the_trained_weights(cls):
    agent, buffer = _agent(cls, RATE), _buffer()
    assert all(not p.requires_grad for p in agent.acting_policy.parameters())
    expected = _weights(agent.policy)  # the copy starts at the initial weights
    for step in (1, 2, 3):
        agent.update(buffer.sample(32), step)
        expected = [(1 - RATE) * e + RATE * p for e, p in zip(expected, _weights(agent.policy), strict=True)]
        for got, want in zip(_weights(agent.acting_policy), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # after 3 steps the average differs from the trained weights, and the average is what acts
    assert any(
        not torch.allclose(a, p)
        for a, p in zip(_weights(agent.acting_policy), _weights(agent.policy), strict=True)
    )
    observations, noise = torch.randn(4, 6), torch.randn(3, 4, 2)
    action, _ = agent.act(observations, noise=noise)
    trained = cls(6, 2, AgentConfig(), TINY, 10)
    trained.policy.load_state_dict(agent.acting_policy.state_dict())
    trained.target_critic.load_state_dict(agent.target_critic.state_dict())
    torch.testing.assert_close(action, trained.act(observations, noise=noise)[0])


def test_training_does_not_depend_on_the_acting_copy():
    plain, averaged = _agent(MFQLAgent, 0.0), _agent(MFQLAgent, RATE)
    plain_buffer, averaged_buffer = _buffer(), _buffer()
    for step in (1, 2, 3):
        a = plain.update(plain_buffer.sample(32), step)
        b = averaged.update(averaged_buffer.sample(32), step)
        for key in ("critic/loss", "mfi/loss", "actor/loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_checkpoint_serves_the_acting_weights_and_resume_restores_them(tmp_path):
    config = TrainConfig(network=TINY, offline_steps=10, agent_config=AgentConfig(policy_ema_rate=RATE))
    agent, buffer = _agent(MFQLAgent, RATE), _buffer()
    for step in (1, 2, 3):
        agent.update(buffer.sample(32), step)
    step_dir = save_training_state(tmp_path, 3, config, agent, buffer, {})

    module, _ = load_serving_policy(tmp_path)
    for got, want in zip(module.policy.parameters(), agent.acting_policy.parameters(), strict=True):
        torch.testing.assert_close(got, want)

    resumed = _agent(MFQLAgent, RATE, seed=7)  # different init: the copy must come from disk
    restore_training_state(step_dir, resumed, _buffer(), load_policy_checkpoint(step_dir).model)
    for got, want in zip(resumed.acting_policy.parameters(), agent.acting_policy.parameters(), strict=True):
        torch.testing.assert_close(got, want)

    # a checkpoint that claims an acting copy but lacks its weights says so
    plain = _agent(MFQLAgent, 0.0)
    save_training_state(tmp_path / "broken", 1, config, plain, buffer, {})
    with pytest.raises(CheckpointError, match="do not match"):
        load_serving_policy(tmp_path / "broken")


def test_rate_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="policy_ema_rate"):
        AgentConfig(policy_ema_rate=1.0)
    with pytest.raises(ValueError, match="policy_ema_rate"):
        AgentConfig(policy_ema_rate=-0.1)
