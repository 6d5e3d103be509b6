"""What MFQL and FQL share: the batch, one-step actions, best-of-K, and the critic's losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call


@dataclass(frozen=True)
class Batch:
    """A batch of transitions; observations already normalised."""

    observations: Tensor  # [B, obs_dim]
    actions: Tensor  # [B, action_dim]
    rewards: Tensor  # [B]
    masks: Tensor  # [B]
    next_observations: Tensor  # [B, obs_dim]


def one_step_actions(policy: nn.Module, observations: Tensor, noise: Tensor) -> Tensor:
    """Unclipped one-step policy output g(s, e, t = 1).

    t is passed as one [1, 1] row that the networks broadcast: the DiT's conditioning path
    (time embedding and every adaLN modulation) then runs once instead of once per row,
    and in an exported graph it folds to constants.
    """
    return policy(observations, noise, noise.new_ones(1, 1))


def best_of_k(
    policy: nn.Module, critic: nn.Module, observations: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Best of K one-step candidates by the critic's ensemble mean.

    observations [B, obs_dim], noise [K, B, action_dim] -> (actions [B, d], q [B], candidates [K, B, d]).
    Ties resolve to the lowest candidate index (first maximum). Written with shape-derived
    sizes and gathers only, so the same code traces to ONNX/TorchScript with dynamic B and K.
    """
    k, b, d = noise.shape
    repeated = observations.unsqueeze(0).expand(k, -1, -1).reshape(k * b, observations.shape[-1])
    candidates = one_step_actions(policy, repeated, noise.reshape(k * b, d)).clamp(-1, 1).reshape(k, b, d)
    scores = critic(repeated, candidates.reshape(k * b, d)).mean(dim=0).reshape(k, b)
    best = scores.argmax(dim=0, keepdim=True)
    q = scores.gather(0, best).squeeze(0)
    actions = candidates.gather(0, best.unsqueeze(-1).expand(-1, -1, d)).squeeze(0)
    return actions, q, candidates


def critic_loss(
    critic: nn.Module,
    target_critic: nn.Module,
    policy: nn.Module,
    batch: Batch,
    next_noise: Tensor,
    discount: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Ensemble TD loss with a best-of-K target action for s' (ALGORITHM.md (3)).

    The reference asks for K // 2 candidates but, through a typing quirk, always uses K;
    we use K, which is what produced the paper's numbers.
    """
    with torch.no_grad():
        _, next_q, _ = best_of_k(policy, target_critic, batch.next_observations, next_noise)
        target = batch.rewards + discount * batch.masks * next_q
    q = critic(batch.observations, batch.actions)
    loss = (q - target).pow(2).mean()
    return loss, {
        "critic/loss": loss,
        "critic/q_mean": q.mean(),
        "critic/q_max": q.max(),
        "critic/q_min": q.min(),
    }


def frozen_critic_q(critic: nn.Module, observations: Tensor, actions: Tensor) -> Tensor:
    """Ensemble-mean Q [B] with the critic's parameters as constants: gradients reach only `actions`."""
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    return functional_call(critic, frozen, (observations, actions)).mean(dim=0)


def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online, with the freshly updated online network."""
    with torch.no_grad():
        for t_param, o_param in zip(target.parameters(), online.parameters(), strict=True):
            t_param.lerp_(o_param, tau)
