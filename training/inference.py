"""The serving computation: raw observation + noise -> best-of-K action, its Q and all candidates.

`ServingPolicy` is exactly what a bundle's graph computes (docs/bundle-format.md), and what
`mfql-eval` runs, so evaluation and serving cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from training.agents.common import best_of_k
from training.checkpoint import CheckpointError, PolicyCheckpoint, load_policy_checkpoint
from training.networks import CriticEnsemble, ObservationNormalizer, build_policy


class ServingPolicy(nn.Module):
    """forward(observation [B, obs_dim], noise [B, K, d]) -> (action [B, d], q_value [B], candidates [B, K, d]).

    Candidates are scored by the target critic's ensemble mean, as the reference's
    `sample_actions_best` does at evaluation.
    """

    def __init__(
        self, normalizer: ObservationNormalizer, policy: nn.Module, critic: CriticEnsemble, action_dim: int
    ) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.policy = policy
        self.critic = critic
        self.action_dim = int(action_dim)

    def forward(self, observation: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        actions, q, candidates = best_of_k(
            self.policy, self.critic, self.normalizer(observation), noise.transpose(0, 1)
        )
        return actions, q, candidates.transpose(0, 1)


def serving_policy_from_checkpoint(checkpoint: PolicyCheckpoint) -> ServingPolicy:
    """Build the serving module from a loaded checkpoint (eval mode, no gradients)."""
    network = checkpoint.config.network
    policy = build_policy(checkpoint.obs_dim, checkpoint.action_dim, network, checkpoint.config.agent)
    critic = CriticEnsemble(checkpoint.obs_dim, checkpoint.action_dim, network)
    # a run trained with `policy_ema_rate` > 0 acts with the EMA of its policy's weights
    acting = "acting_policy" if checkpoint.config.agent_config.policy_ema_rate > 0 else "policy"
    try:
        policy.load_state_dict(checkpoint.module_state(acting))
        critic.load_state_dict(checkpoint.module_state("target_critic"))
    except RuntimeError as exc:
        raise CheckpointError(
            f"{checkpoint.path}: weights do not match the described networks ({exc})"
        ) from exc
    normalizer = ObservationNormalizer(checkpoint.obs_mean, checkpoint.obs_std)
    module = ServingPolicy(normalizer, policy, critic, checkpoint.action_dim)
    return module.eval().requires_grad_(False)


def load_serving_policy(path: Path | str) -> tuple[ServingPolicy, PolicyCheckpoint]:
    checkpoint = load_policy_checkpoint(path)
    return serving_policy_from_checkpoint(checkpoint), checkpoint


@torch.no_grad()
def sample_actions(
    module: ServingPolicy, observation: Tensor, num_candidates: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Actions [B, d] and Q [B] for raw observations [B, obs_dim], with noise drawn from `generator`."""
    noise = torch.randn(observation.shape[0], num_candidates, module.action_dim, generator=generator)
    action, q_value, _ = module(observation, noise)
    return action, q_value
