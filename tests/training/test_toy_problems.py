"""The paper's sanity experiments on toy problems: multimodal one-step BC, and Q-guided mode choice."""

from __future__ import annotations

import torch

from training.agents.mfql import (
    Batch,
    MFQLAgent,
    mean_flow_identity_loss,
    one_step_actions,
    sample_flow_times,
)
from training.config import AgentConfig, NetworkConfig
from training.networks import build_policy

CENTERS = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]])


def _mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    index = torch.randint(0, len(CENTERS), (n,), generator=generator)
    return CENTERS[index] + 0.05 * torch.randn(n, 2, generator=generator)


def _mode_statistics(samples: torch.Tensor) -> tuple[list[float], float]:
    distances = torch.cdist(samples, CENTERS)
    shares = [(distances.argmin(1) == i).float().mean().item() for i in range(len(CENTERS))]
    between = (distances.min(1).values > 0.2).float().mean().item()
    return shares, between


def test_one_step_policy_covers_every_mode_of_a_four_gaussian_mixture():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    steps = 2000
    policy = build_policy(1, 2, NetworkConfig(policy="mlp", mlp_hidden=(128, 128, 128)))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    config = AgentConfig(time_steps=10000)
    observations = torch.zeros(256, 1)
    for _ in range(steps):  # BC only: the MeanFlow-identity loss with the Q term off
        batch = Batch(
            observations, _mixture(256, generator), torch.zeros(256), torch.zeros(256), observations
        )
        t = sample_flow_times(256, config.time_steps, generator)
        loss, _ = mean_flow_identity_loss(policy, batch, torch.randn(256, 2, generator=generator), t, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        samples = one_step_actions(policy, torch.zeros(4000, 1), torch.randn(4000, 2, generator=generator))
    shares, between = _mode_statistics(samples)
    assert min(shares) >= 0.10, f"a mode is missing: shares {shares}"
    assert between < 0.25, f"too many samples between modes: {between:.3f}"

    data = _mixture(4000, generator)  # a unimodal Gaussian fit of the same data cannot do this
    gaussian = (
        data.mean(0) + torch.randn(4000, 2, generator=generator) @ torch.linalg.cholesky(torch.cov(data.T)).T
    )
    _, gaussian_between = _mode_statistics(gaussian)
    assert gaussian_between > 0.5
    assert between < gaussian_between / 2


def test_q_term_moves_the_policy_to_the_higher_value_mode_inside_the_data_support():
    """One-step bandit: data at a = -0.5 and +0.5 (plus 10% uniform exploration), r = -(a - 0.5)^2."""
    seed = 0  # also checked with seeds 1-3
    generator = torch.Generator().manual_seed(seed)
    steps = 1500
    config = AgentConfig(
        alpha=1.0,  # the critic is anchored everywhere by the exploration data
        alpha_update_interval=10**9,  # constant alpha for this toy
        num_candidates=5,
        discount=0.9,
        actor_lr=1e-3,
        critic_lr=1e-3,
        actor_warmup_fraction=0.0,
    )
    network = NetworkConfig(policy="mlp", mlp_hidden=(128, 128, 128), critic_hidden=(64, 64))
    agent = MFQLAgent(2, 1, config, network, offline_steps=steps, seed=seed)

    def batch(n: int) -> Batch:
        sign = torch.where(torch.rand(n, 1, generator=generator) < 0.5, -1.0, 1.0)
        actions = sign * 0.5 + 0.05 * torch.randn(n, 1, generator=generator)
        explore = torch.rand(n, 1, generator=generator) < 0.1
        actions = torch.where(explore, torch.rand(n, 1, generator=generator) * 2 - 1, actions)
        observations = torch.zeros(n, 2)
        return Batch(observations, actions, -((actions[:, 0] - 0.5) ** 2), torch.zeros(n), observations)

    data = batch(4000).actions[:, 0]
    assert (data < 0).float().mean() > 0.4, "the behaviour data is bimodal"
    for step in range(1, steps + 1):
        agent.update(batch(256), step)
    with torch.no_grad():
        actions = one_step_actions(
            agent.policy, torch.zeros(4000, 2), torch.randn(4000, 1, generator=generator)
        )
    actions = actions.clamp(-1, 1)[:, 0]
    assert (actions < 0).float().mean() < 0.05, "the policy should leave the low-value mode"
    assert abs(actions.median().item() - 0.5) < 0.15, "and sit on the high-value mode"
    assert ((actions > 0.15) & (actions < 0.85)).float().mean() > 0.95, "without leaving the data's support"
