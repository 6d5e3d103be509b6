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
from training.config import (
    FLOW_DISTILLED_AGENTS,
    NO_FLOW_TIME,
    Acting,
    ActingOverrides,
    check_renoise_range,
)
from training.networks import CriticEnsemble, MLPPolicy, ObservationNormalizer, build_policy


class ServingPolicy(nn.Module):
    """forward(observation [B, obs_dim], noise [B, K, d]) -> (action [B, d], q_value [B], candidates [B, K, d]).

    With an action horizon H > 1 (a chunked policy) the noise is [B, K, H, d] and the outputs
    are action [B, H, d], q_value [B] (the critic's value of the whole chunk) and candidates
    [B, K, H, d]; the networks see a chunk as one H * d vector. H = 1 keeps the signature above.
    `acting` (training.config.Acting, a run's AgentConfig.acting) holds the rest: candidates are
    scored by the target critic's ensemble mean, as the reference's `sample_actions_best` does at
    evaluation, or by its minimum (`critic_aggregate` "min", a study option; q_value is then that
    minimum); `noise_scale` (a study option) multiplies the noise before the policy sees it, 1
    leaving the graph as the paper's; MeanFlow policies may re-noise their candidates
    (`renoise_time`; None: the paper's one step).
    """

    def __init__(
        self,
        normalizer: ObservationNormalizer,
        policy: nn.Module,
        critic: CriticEnsemble,
        action_dim: int,
        action_horizon: int = 1,
        action_bounds: tuple[list[float], list[float]] | None = None,
        acting: Acting = Acting(),
    ) -> None:
        super().__init__()
        self.acting = acting
        self.normalizer = normalizer
        self.policy = policy
        self.critic = critic
        self.action_dim = int(action_dim)
        self.action_horizon = int(action_horizon)
        # Data whose actions were mapped from [low, high] to [-1, 1] for training (`--action-scaling`):
        # the outputs are mapped back, so evaluation, export and serving act in the data's units.
        self.scaled = action_bounds is not None
        low, high = action_bounds or ([-1.0] * self.action_dim, [1.0] * self.action_dim)
        self.register_buffer("action_low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(high, dtype=torch.float32))

    def to_data_units(self, actions: Tensor) -> Tensor:
        """Policy outputs in [-1, 1] -> the data's action units (identity without scaling)."""
        if not self.scaled:
            return actions
        return self.action_low + (actions + 1.0) * 0.5 * (self.action_high - self.action_low)

    def to_policy_units(self, actions: Tensor) -> Tensor:
        """The inverse of `to_data_units` (online steps store actions as the policy sees them)."""
        if not self.scaled:
            return actions
        return (actions - self.action_low) / (self.action_high - self.action_low) * 2.0 - 1.0

    @property
    def renoise_time(self) -> float | None:
        return self.acting.renoise_time

    @property
    def critic_aggregate(self) -> str:
        return self.acting.critic_aggregate

    @property
    def noise_scale(self) -> float:
        return self.acting.noise_scale

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one candidate's noise: (d,), or (H, d) for a chunked policy."""
        if self.action_horizon == 1:
            return (self.action_dim,)
        return (self.action_horizon, self.action_dim)

    def forward(self, observation: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.action_horizon > 1:
            noise = noise.flatten(2)  # [B, K, H, d] -> [B, K, H * d]: a chunk is one vector
        if self.noise_scale != 1.0:  # unscaled: no extra node in an exported graph
            noise = noise * self.noise_scale
        actions, q, candidates = best_of_k(
            self.policy,
            self.critic,
            self.normalizer(observation),
            noise.transpose(0, 1),
            self.renoise_time,
            self.critic_aggregate,
        )
        candidates = candidates.transpose(0, 1)
        if self.action_horizon > 1:
            chunk = (self.action_horizon, self.action_dim)
            actions, candidates = actions.unflatten(-1, chunk), candidates.unflatten(-1, chunk)
        return self.to_data_units(actions), q, self.to_data_units(candidates)


def check_renoise_time(agent: str, renoise_time: float | None) -> None:
    """Re-noising needs a MeanFlow network g(s, z, t); a one-step network mu(s, z) takes no time."""
    if renoise_time is None:
        return
    if agent in FLOW_DISTILLED_AGENTS:
        raise ValueError(f"renoise_time {NO_FLOW_TIME}")
    check_renoise_range(renoise_time)


def serving_policy_from_checkpoint(
    checkpoint: PolicyCheckpoint, overrides: ActingOverrides = ActingOverrides()
) -> ServingPolicy:
    """Build the serving module from a loaded checkpoint (eval mode, no gradients).

    It acts as the run does (AgentConfig.acting) except where `overrides` says otherwise
    (a renoise_time of 0 turns re-noising off, the paper's one step, for a run trained with it).
    """
    network = checkpoint.config.network
    horizon = checkpoint.config.agent_config.action_horizon
    chunk_dim = checkpoint.action_dim * horizon  # what the networks see: one chunk as one vector
    policy = build_policy(checkpoint.obs_dim, chunk_dim, network, checkpoint.config.agent)
    critic = CriticEnsemble(checkpoint.obs_dim, chunk_dim, network)
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
    acting = overrides.applied_to(checkpoint.config.agent_config.acting)
    check_renoise_time(checkpoint.config.agent, acting.renoise_time)
    module = ServingPolicy(
        normalizer,
        policy,
        critic,
        checkpoint.action_dim,
        horizon,
        action_bounds_of(checkpoint.dataset),
        acting,
    )
    return module.eval().requires_grad_(False)


def bc_flow_of(checkpoint: PolicyCheckpoint) -> nn.Module:
    """The BC velocity field of an FQL or bon-distill run (`bc_flow.*`), frozen, in eval mode."""
    if checkpoint.config.agent not in FLOW_DISTILLED_AGENTS:
        raise ValueError(
            f"{checkpoint.path} is an {checkpoint.config.agent} run; a BC flow is an FQL (or bon-distill) run's"
        )
    chunk_dim = checkpoint.action_dim * checkpoint.config.agent_config.action_horizon
    flow = MLPPolicy(checkpoint.obs_dim, chunk_dim, checkpoint.config.network, zero_head=False)
    flow.load_state_dict(checkpoint.module_state("bc_flow"))
    return flow.eval().requires_grad_(False)


def action_bounds_of(provenance: dict) -> tuple[list[float], list[float]] | None:
    """The (low, high) a run scaled its actions from, or None (actions trained as they are)."""
    if provenance.get("action_low") is None:
        return None
    return list(provenance["action_low"]), list(provenance["action_high"])


def load_serving_policy(
    path: Path | str, overrides: ActingOverrides = ActingOverrides()
) -> tuple[ServingPolicy, PolicyCheckpoint]:
    checkpoint = load_policy_checkpoint(path)
    return serving_policy_from_checkpoint(checkpoint, overrides), checkpoint


@torch.no_grad()
def sample_actions(
    module: ServingPolicy, observation: Tensor, num_candidates: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Actions [B, d] ([B, H, d] when chunked) and Q [B] for raw observations [B, obs_dim].

    The noise is drawn from `generator`.
    """
    noise = torch.randn(observation.shape[0], num_candidates, *module.noise_shape, generator=generator)
    action, q_value, _ = module(observation, noise)
    return action, q_value
