"""FQL baseline: Euler flow integration, flow-matching target, and a checkpoint that serves like MFQL's."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from training.agents import build_agent
from training.agents.common import Batch
from training.agents.fql import euler_flow_actions, flow_matching_loss, fql_actor_loss
from training.checkpoint import load_policy_checkpoint
from training.config import AgentConfig, NetworkConfig, TrainConfig, resolve_agent_config
from training.inference import load_serving_policy
from training.networks import CriticEnsemble, OneStepMLPPolicy
from training.replay_buffer import ReplayBuffer
from training.training_state import restore_training_state, save_training_state


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


class AffineInTime(nn.Module):
    """v(s, x, t) = a + b t, recording every t it is asked about."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.times: list[float] = []

    def forward(self, observations, x, t):
        self.times.extend(t.flatten().tolist())
        return (self.a + self.b * t).expand_as(x)


def test_euler_integration_of_a_time_dependent_field_matches_its_closed_form():
    # n Euler steps of v = a + b t from x0 give x0 + a + b (n - 1) / (2n), since they read the
    # field at t = 0, 1/n, ..., (n-1)/n; the ODE's own solution is x0 + a + b / 2.
    a, b = torch.tensor([0.1, -0.2]), torch.tensor([0.6, 1.0])
    noise = torch.tensor([[0.0, 0.0], [-0.5, 0.2]])
    field = AffineInTime(a, b)
    actions = euler_flow_actions(field, torch.zeros(2, 1), noise, steps=10)
    assert field.times == pytest.approx([i / 10 for i in range(10)])
    assert torch.allclose(actions, (noise + a + 0.45 * b).clamp(-1, 1), atol=1e-6)
    fine = euler_flow_actions(AffineInTime(a, b), torch.zeros(2, 1), noise, steps=1000)
    assert torch.allclose(fine, (noise + a + 0.5 * b).clamp(-1, 1), atol=1e-3)


class IdentityOneStep(nn.Module):
    """A one-step 'policy' whose action is its input noise (plus a learnable offset, 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(1))

    def forward(self, observations, z, t=None):
        return z + self.offset


def test_distillation_target_is_the_flow_solution_from_the_one_step_policys_own_noise():
    """With v = 0 the 10-step flow returns its noise: distillation is exact only for the same noise."""
    generator = torch.Generator().manual_seed(0)
    actions = torch.rand(8, 2, generator=generator) * 2 - 1
    batch = Batch(torch.zeros(8, 3), actions, -torch.ones(8), torch.ones(8), torch.zeros(8, 3))
    flow_noise = torch.randn(8, 2, generator=generator)
    policy_noise = torch.rand(8, 2, generator=generator) * 1.8 - 0.9  # inside [-1, 1]: no clipping
    critic = CriticEnsemble(3, 2, NetworkConfig(critic_hidden=(8,)))
    velocity = ConstantVelocity(torch.zeros(2))
    _, info = fql_actor_loss(
        velocity, IdentityOneStep(), critic, batch, (flow_noise, policy_noise), torch.full((8, 1), 0.5),
        AgentConfig(alpha=100.0),
    )  # fmt: skip
    assert info["actor/distill_loss"].item() == 0.0
    # ... and the BC flow loss uses the other noise: (a - flow_noise) is its target velocity.
    expected_bc = (actions - flow_noise).pow(2).mean()
    assert torch.isclose(info["bc_flow/loss"], expected_bc)


def test_fql_actor_loss_gives_the_critic_no_gradient():
    generator = torch.Generator().manual_seed(0)
    network = NetworkConfig(mlp_hidden=(16,), critic_hidden=(16,))
    batch = Batch(
        torch.randn(8, 3, generator=generator),
        torch.rand(8, 2, generator=generator) * 2 - 1,
        -torch.ones(8),
        torch.ones(8),
        torch.randn(8, 3, generator=generator),
    )
    velocity, policy = ConstantVelocity(torch.zeros(2)), OneStepMLPPolicy(3, 2, network)
    critic = CriticEnsemble(3, 2, network)
    noises = (torch.randn(8, 2, generator=generator), torch.randn(8, 2, generator=generator))
    loss, _ = fql_actor_loss(velocity, policy, critic, batch, noises, torch.rand(8, 1), AgentConfig())
    loss.backward()
    assert all(p.grad is None for p in critic.parameters())
    assert all(p.grad is not None for p in policy.parameters())


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


def _fql_setup(seed: int):
    rng = np.random.default_rng(0)
    n = 200
    data = types.SimpleNamespace(
        size=n,
        observations=rng.normal(size=(n, 4)),
        actions=rng.uniform(-1, 1, size=(n, 2)),
        rewards=-rng.integers(0, 2, size=n).astype(float),
        masks=np.ones(n),
        next_observations=rng.normal(size=(n, 4)),
    )
    network = NetworkConfig(mlp_hidden=(16, 16), critic_hidden=(16, 16))
    config = TrainConfig(
        agent="fql",
        network=network,
        offline_steps=6,
        agent_config=resolve_agent_config("cube-single", agent="fql"),
    )
    agent = build_agent("fql", 4, 2, config.agent_config, network, 6, seed=seed)
    buffer = ReplayBuffer(data, data.observations.mean(0), data.observations.std(0), 0, 0)
    return config, agent, buffer


def test_resumed_fql_training_reproduces_the_uninterrupted_run(tmp_path):
    _, agent, buffer = _fql_setup(seed=0)
    straight = [agent.update(buffer.sample(16), step) for step in range(1, 7)]

    config, first, first_buffer = _fql_setup(seed=0)
    for step in (1, 2, 3):
        first.update(first_buffer.sample(16), step)
    step_dir = save_training_state(tmp_path, 3, config, first, first_buffer, {})
    _, resumed, resumed_buffer = _fql_setup(seed=123)  # another init: everything must come from disk
    restore_training_state(step_dir, resumed, resumed_buffer, load_policy_checkpoint(step_dir).model)
    continued = [resumed.update(resumed_buffer.sample(16), step) for step in (4, 5, 6)]
    for expected, got in zip(straight[3:], continued, strict=True):
        for key in ("critic/loss", "bc_flow/loss", "actor/distill_loss", "actor/q_loss"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    for name, module in agent.modules().items():
        other = resumed.modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.allclose(value, other[key], atol=1e-7), f"{name}.{key}"
