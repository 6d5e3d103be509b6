"""Unit tests of MFQL's maths: JVP, MeanFlow-identity target, adaptive L2, best-of-K, critic target."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from training.agents.common import critic_loss, frozen_critic_q
from training.agents.mfql import (
    Batch,
    MFQLAgent,
    actor_loss,
    adaptive_l2_loss,
    best_of_k,
    flow_time_derivative,
    mean_flow_identity_target,
    sample_flow_times,
)
from training.config import AgentConfig, NetworkConfig
from training.networks import CriticEnsemble, build_policy

SMALL = NetworkConfig(
    dit_width=64, dit_depth=2, time_frequencies=32, mlp_hidden=(64, 64), critic_hidden=(32, 32)
)


def _randomised_policy(kind: str, obs_dim: int, action_dim: int) -> nn.Module:
    """A policy whose zero-initialised layers are perturbed, so g depends on z and t non-trivially."""
    torch.manual_seed(0)
    policy = build_policy(
        obs_dim,
        action_dim,
        NetworkConfig(
            policy=kind,
            **{k: getattr(SMALL, k) for k in ("dit_width", "dit_depth", "time_frequencies", "mlp_hidden")},
        ),
    )
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return policy.double()


@pytest.mark.parametrize("kind", ["dit", "mlp"])
def test_jvp_time_derivative_matches_central_finite_differences(kind):
    policy = _randomised_policy(kind, obs_dim=6, action_dim=3)
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(16, 6, generator=generator, dtype=torch.float64)
    z = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    t = torch.rand(16, 1, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    v = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    g, dg_dt = flow_time_derivative(policy, obs, z, t, v)
    h = 1e-5
    with torch.no_grad():
        finite = (policy(obs, z + h * v, t + h) - policy(obs, z - h * v, t - h)) / (2 * h)
        assert torch.allclose(g, policy(obs, z, t))
    relative = (dg_dt - finite).norm() / finite.norm()
    assert finite.norm() > 1e-3, "the test policy must actually depend on z and t"
    assert relative < 1e-3


class LinearResidual(nn.Module):
    """g(s, z, t) = A z + b t: dg/dt along (v, 1) is A v + b by hand."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, observations, z, t):
        return z @ self.a.T + t * self.b


def test_mfi_target_of_a_linear_residual_equals_the_hand_derived_value():
    a = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    b = torch.tensor([0.3, -0.7])
    actions = torch.tensor([[0.2, -0.4]])
    noise = torch.tensor([[1.0, 0.5]])
    t = torch.tensor([[0.25]])
    g, target = mean_flow_identity_target(
        LinearResidual(a, b), torch.zeros(1, 1), actions, noise, t, target_clip=5.0
    )
    # By hand: z = 0.75 a + 0.25 e = (0.4, -0.175); v = e - a = (0.8, 0.9);
    # dg/dt = A v + b = (0.4 - 0.9 + 0.3, 1.6 + 0.225 - 0.7) = (-0.2, 1.125);
    # target = z + (t - 1) v - t dg/dt = (0.4 - 0.6 + 0.05, -0.175 - 0.675 - 0.28125)
    assert torch.allclose(target, torch.tensor([[-0.15, -1.13125]]), atol=1e-6)
    assert torch.allclose(g, torch.tensor([[0.4 * 0.5 + 0.175 + 0.075, 0.8 - 0.04375 - 0.175]]), atol=1e-6)


class PointMassSolution(nn.Module):
    """The exact residual for data concentrated at a0: u = (z - a0) / t, so g = z - (z - a0) / t."""

    def __init__(self, a0: torch.Tensor) -> None:
        super().__init__()
        self.a0 = a0

    def forward(self, observations, z, t):
        return z - (z - self.a0) / t


def test_exact_solution_is_a_fixed_point_of_the_mfi_target():
    a0 = torch.tensor([[0.3, -0.6, 0.1]])
    noise = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    t = torch.rand(32, 1, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.1
    g, target = mean_flow_identity_target(
        PointMassSolution(a0), torch.zeros(32, 1), a0.expand(32, 3), noise, t, 5.0
    )
    assert torch.allclose(g, target, atol=1e-5)
    one_step = PointMassSolution(a0)(None, noise, torch.ones(32, 1))
    assert torch.allclose(one_step, a0.expand(32, 3), atol=1e-6), "g(s, e, 1) must recover the data point"


def test_mfi_target_is_clipped_to_plus_minus_five():
    big = LinearResidual(torch.eye(2) * 100.0, torch.zeros(2))
    _, target = mean_flow_identity_target(
        big, torch.zeros(4, 1), torch.ones(4, 2), -torch.ones(4, 2), torch.full((4, 1), 0.5), 5.0
    )
    assert target.abs().max() == 5.0
    assert not target.requires_grad


def test_adaptive_l2_weights_each_sample_by_the_detached_inverse_power():
    prediction = torch.tensor([[1.0, 1.0], [0.0, 2.0]], requires_grad=True)
    target = torch.zeros(2, 2)
    loss = adaptive_l2_loss(prediction, target, gamma=0.8, c=1e-4)
    deltas = torch.tensor([1.0, 2.0])
    expected = (deltas / (deltas + 1e-4) ** 0.2).mean()
    assert torch.isclose(loss, expected)
    loss.backward()
    # Gradient of mean(w * delta) with w constant: w_i / B * d delta_i / d pred = w_i / B * 2 (p) / D
    w = 1 / (deltas + 1e-4) ** 0.2
    assert torch.allclose(prediction.grad, torch.tensor([[w[0] / 2, w[0] / 2], [0.0, w[1] * 2 / 2]]))


def test_flow_times_use_the_grid_or_continuous_uniform():
    generator = torch.Generator().manual_seed(0)
    grid = sample_flow_times(4096, 50, generator)
    assert torch.allclose(grid * 50, (grid * 50).round(), atol=1e-4)
    assert grid.min() >= 1 / 50 - 1e-7 and grid.max() <= 1.0
    assert len(torch.unique(grid)) == 50
    continuous = sample_flow_times(4096, 10000, generator)
    assert len(torch.unique(continuous)) > 4000 and continuous.min() > 0 and continuous.max() < 1


def test_linear_flow_time_sampling_has_density_2t_on_the_grid_and_continuous():
    generator = torch.Generator().manual_seed(0)
    n = 200_000
    # continuous: P(t <= x) = x^2, so a quarter of the draws fall below 1/2, and E[t] = 2/3
    continuous = sample_flow_times(n, 10000, generator, "linear")
    assert continuous.shape == (n, 1) and continuous.min() >= 0 and continuous.max() < 1
    assert (continuous <= 0.5).float().mean().item() == pytest.approx(0.25, abs=0.005)
    assert continuous.mean().item() == pytest.approx(2 / 3, abs=0.003)
    # grid N = 4: P(i/4) = i/10 for i = 1..4
    grid = sample_flow_times(n, 4, generator, "linear")
    shares = [(grid == i / 4).float().mean().item() for i in range(1, 5)]
    assert shares == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.005)
    with pytest.raises(ValueError, match="flow-time sampling"):
        sample_flow_times(4, 10, generator, "cubic")


class FixedCandidates(nn.Module):
    """A 'policy' whose one-step action is the noise itself, to control candidates exactly."""

    def forward(self, observations, z, t):
        return z


class QuadraticCritic(nn.Module):
    """Two members that disagree; their mean is -(a - 0.5)^2 summed over dims."""

    def forward(self, observations, actions):
        base = -(actions - 0.5).pow(2).sum(-1)
        return torch.stack([base + 1.0, base - 1.0])


def test_best_of_k_returns_the_candidate_with_the_highest_ensemble_mean():
    noise = torch.tensor([[[0.0], [2.0]], [[0.4], [0.9]], [[0.6], [-3.0]]])  # K=3, B=2, d=1
    actions, q, candidates = best_of_k(FixedCandidates(), QuadraticCritic(), torch.zeros(2, 1), noise)
    assert torch.allclose(candidates[:, 1, 0], torch.tensor([1.0, 0.9, -1.0])), "candidates are clipped"
    assert torch.allclose(actions, torch.tensor([[0.4], [0.9]]))  # tie 0.4/0.6 -> first index
    assert torch.allclose(q, torch.tensor([-0.01, -0.16]))


def test_critic_target_uses_best_of_k_next_action_and_masks():
    critic = CriticEnsemble(1, 1, NetworkConfig(critic_hidden=(8,)))
    batch = Batch(
        observations=torch.zeros(2, 1),
        actions=torch.zeros(2, 1),
        rewards=torch.tensor([-1.0, 0.0]),
        masks=torch.tensor([1.0, 0.0]),
        next_observations=torch.zeros(2, 1),
    )
    noise = torch.tensor([[[0.0], [0.0]], [[0.5], [0.5]]])  # the best candidate is 0.5 with Q 0
    loss, _ = critic_loss(critic, QuadraticCritic(), FixedCandidates(), batch, noise, discount=0.9)
    q = critic(batch.observations, batch.actions)
    expected_target = torch.tensor([-1.0 + 0.9 * 0.0, 0.0])
    assert torch.isclose(loss, (q - expected_target).pow(2).mean())
    noise_bad = torch.tensor([[[0.0], [0.0]], [[-1.0], [-1.0]]])  # best now 0.0 with Q -0.25
    loss_bad, _ = critic_loss(critic, QuadraticCritic(), FixedCandidates(), batch, noise_bad, discount=0.9)
    assert torch.isclose(loss_bad, (q - torch.tensor([-1.0 - 0.9 * 0.25, 0.0])).pow(2).mean())


def _random_batch(n: int = 16, obs_dim: int = 3, action_dim: int = 2) -> Batch:
    generator = torch.Generator().manual_seed(3)
    return Batch(
        torch.randn(n, obs_dim, generator=generator),
        torch.rand(n, action_dim, generator=generator) * 2 - 1,
        -torch.randint(0, 2, (n,), generator=generator).float(),
        torch.ones(n),
        torch.randn(n, obs_dim, generator=generator),
    )


def test_frozen_critic_q_passes_gradients_to_the_actions_only():
    critic = CriticEnsemble(3, 2, NetworkConfig(critic_hidden=(16, 16)))
    batch = _random_batch()
    actions = batch.actions.clone().requires_grad_(True)
    frozen_critic_q(critic, batch.observations, actions).sum().backward()
    assert all(p.grad is None for p in critic.parameters())
    reference = batch.actions.clone().requires_grad_(True)
    critic(batch.observations, reference).mean(dim=0).sum().backward()
    assert torch.allclose(actions.grad, reference.grad) and actions.grad.abs().sum() > 0


def test_mfql_actor_loss_trains_the_policy_and_not_the_critic():
    network = NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16))
    policy = _randomised_policy("mlp", 3, 2).float()
    critic = CriticEnsemble(3, 2, network)
    batch = _random_batch()
    loss, _ = actor_loss(policy, critic, batch, torch.randn(16, 2), AgentConfig())
    loss.backward()
    assert all(p.grad is None for p in critic.parameters())
    assert sum(p.grad.abs().sum() for p in policy.parameters()) > 0


def test_mfql_update_gives_the_critic_exactly_the_critic_losss_gradient():
    config = AgentConfig(num_candidates=3, alpha=10.0)
    network = NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16))
    agent = MFQLAgent(3, 2, config, network, offline_steps=10, seed=0)
    before = copy.deepcopy(agent.modules())
    noise_state = agent.generator.get_state()
    batch = _random_batch()
    agent.update(batch, 1)
    # The update draws the critic target's noise first: replay it on the pre-update networks.
    replay = torch.Generator().set_state(noise_state)
    next_noise = torch.randn(3, 16, 2, generator=replay)
    loss, _ = critic_loss(
        before["critic"], before["target_critic"], before["policy"], batch, next_noise, config.discount
    )
    loss.backward()
    nn.utils.clip_grad_norm_(before["critic"].parameters(), config.grad_clip)
    for (name, got), expected in zip(
        agent.critic.named_parameters(), before["critic"].parameters(), strict=True
    ):
        assert torch.allclose(got.grad, expected.grad, atol=1e-7), name
