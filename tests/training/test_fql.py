"""FQL baseline: Euler flow integration, flow-matching target, and a checkpoint that serves like MFQL's."""

from __future__ import annotations

import types

import numpy as np
import torch
from torch import nn

from training.agents import build_agent
from training.agents.common import Batch
from training.agents.fql import euler_flow_actions, flow_matching_loss
from training.config import NetworkConfig, TrainConfig, resolve_agent_config
from training.inference import load_serving_policy
from training.networks import OneStepMLPPolicy
from training.replay_buffer import ReplayBuffer
from training.training_state import save_training_state


class ConstantVelocity(nn.Module):
    def __init__(self, velocity: torch.Tensor) -> None:
        super().__init__()
        self.velocity = velocity

    def forward(self, observations, x, t):
        return self.velocity.expand_as(x)


def test_euler_integration_of_a_constant_field_moves_noise_by_the_velocity_and_clips():
    noise = torch.tensor([[0.1, -0.2], [0.9, 0.0]])
    actions = euler_flow_actions(
        ConstantVelocity(torch.tensor([0.3, -0.5])), torch.zeros(2, 1), noise, steps=10
    )
    assert torch.allclose(actions, torch.tensor([[0.4, -0.7], [1.0, -0.5]]), atol=1e-6)


def test_flow_matching_loss_is_zero_for_the_straight_line_velocity_of_one_action():
    action = torch.tensor([[0.5, -0.25]])
    noise = torch.tensor([[1.0, 1.0]])
    batch = Batch(torch.zeros(1, 1), action, torch.zeros(1), torch.zeros(1), torch.zeros(1, 1))
    loss, _ = flow_matching_loss(ConstantVelocity(action - noise), batch, noise, torch.tensor([[0.3]]))
    assert loss.item() == 0.0


def test_fql_defaults_come_from_its_own_column_of_the_family_table():
    config = resolve_agent_config("cube-double-play-singletask-task2-v0", agent="fql")
    assert (config.alpha, config.actor_lr, config.critic_lr, config.num_candidates, config.discount) == (
        300.0,
        3e-4,
        3e-4,
        1,
        0.99,
    )
    assert resolve_agent_config("cube-double-play-singletask-task2-v0").alpha == 120.0


def test_fql_trains_and_its_checkpoint_serves_the_one_step_policy(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    data = types.SimpleNamespace(
        size=n,
        observations=rng.normal(size=(n, 4)),
        actions=rng.uniform(-1, 1, size=(n, 2)),
        rewards=-np.ones(n),
        masks=np.ones(n),
        next_observations=rng.normal(size=(n, 4)),
    )
    network = NetworkConfig(mlp_hidden=(32, 32), critic_hidden=(32, 32))
    config = TrainConfig(
        agent="fql",
        network=network,
        offline_steps=3,
        agent_config=resolve_agent_config("cube-single", agent="fql"),
    )
    agent = build_agent("fql", 4, 2, config.agent_config, network, 3, seed=0)
    buffer = ReplayBuffer(data, data.observations.mean(0), data.observations.std(0), 0, 0)
    infos = [agent.update(buffer.sample(16), step) for step in (1, 2, 3)]
    assert all(
        np.isfinite(info["actor/distill_loss"]) and np.isfinite(info["bc_flow/loss"]) for info in infos
    )
    save_training_state(tmp_path, 3, config, agent, buffer, {})
    module, checkpoint = load_serving_policy(tmp_path)
    assert isinstance(module.policy, OneStepMLPPolicy)
    assert "bc_flow.net.0.weight" in checkpoint.model
    observation, noise = torch.randn(5, 4), torch.randn(5, 1, 2)
    action, _, _ = module(observation, noise)
    expected = agent.policy((observation - buffer.mean) / (buffer.std + 1e-8), noise[:, 0]).clamp(-1, 1)
    assert torch.allclose(action, expected, atol=1e-6)
