"""One-step best-of-N: a MeanFlow behaviour generator, with Q only in the choice among its samples.

Q-chunking's best-of-n actor (Li, Zhou and Levine 2025, arXiv 2507.07969, `actor_type=best-of-n`,
`q_agg=mean`) with MFQL's one-step MeanFlow policy in place of its 10-step BC flow
(ALGORITHM.md, "Extensions beside the paper's method"). Against MFQL:
- the actor loss is the MFI loss alone: no Q term and no alpha, so g(s, e, 1) samples the
  dataset's behaviour in one network evaluation and no gradient from Q reaches it;
- acting draws K candidates and keeps the argmax of the critic ensemble's mean, as MFQL does;
- the critic's target is QC's expected-max Q: the next chunk a' is picked among K one-step
  candidates at s' by the online critic's ensemble mean, and valued by the target critic's
  ensemble mean. MFQL picks and values with the target critic, and at K = 32 that maximum of
  32 noisy estimates of one network is biased upward; picking with one network and valuing with
  another keeps the value from counting the very errors that won the selection (partly: the two
  critics differ by the EMA's lag), docs/method.md.
The networks, the optimisers (each clipping its gradient norm) and the actor's lr schedule are
MFQL's, so the agent is `MFQLAgent` with another objective.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.agents.common import (
    Batch,
    acting_candidates,
    agent_critic_loss,
    ema_update,
    ensemble_score,
    td_loss,
)
from training.agents.fused_step import FusedUpdate
from training.agents.mfql import MFQLAgent, mean_flow_identity_loss, sample_flow_times
from training.precision import matmul_autocast

# Rows of the K x B candidate pass per block (whole candidates: 2 of a 256-row batch). Each
# block's activations (1 MB at width 256) are cheap to allocate, where in one 8192-row pass
# allocating each fresh 16 MB buffer cost more than the work done in it, on one CPU core
# (docs/method.md, "One-step best-of-N": 1.38x eager, 1.26x compiled steps/s).
CANDIDATE_BLOCK_ROWS = 512


def candidate_scores(
    policy: nn.Module,
    critic: nn.Module,
    observations: Tensor,
    noise: Tensor,
    renoise_time: float | None = None,
    aggregate: str = "mean",
) -> tuple[Tensor, Tensor]:
    """K one-step candidates per state, clipped, and the critic ensemble's mean (or min) Q of each.

    observations [B, obs_dim], noise [K, B, d] -> (candidates [K, B, d], scores [K, B]): the
    maths of `best_of_k`'s scoring. The networks take the K candidates of a state with its
    observation once (their [K, B, .] inputs), and the rows run in blocks of whole candidates.
    `renoise_time`: the candidates are `renoised_actions` (AgentConfig.renoise_target).
    `aggregate`: the ensemble's "mean" or "min" (AgentConfig.target_aggregate).
    """
    per_block = max(1, CANDIDATE_BLOCK_ROWS // observations.shape[0])
    candidates, scores = [], []
    for block in noise.split(per_block):
        actions = acting_candidates(policy, observations, block, renoise_time)
        candidates.append(actions)
        scores.append(ensemble_score(critic(observations, actions), aggregate))
    return torch.cat(candidates), torch.cat(scores)


def best_candidate(
    policy: nn.Module,
    critic: nn.Module,
    observations: Tensor,
    noise: Tensor,
    renoise_time: float | None = None,
    aggregate: str = "mean",
) -> tuple[Tensor, Tensor]:
    """The candidate with the highest ensemble-mean (or min) Q [B, d] and that Q [B]; ties go to the lowest index."""
    candidates, scores = candidate_scores(policy, critic, observations, noise, renoise_time, aggregate)
    best = scores.argmax(dim=0, keepdim=True)
    actions = candidates.gather(0, best.unsqueeze(-1).expand(-1, -1, candidates.shape[-1])).squeeze(0)
    return actions, scores.gather(0, best).squeeze(0)


@torch.no_grad()
def expected_max_q(
    policy: nn.Module,
    critic: nn.Module,
    target_critic: nn.Module,
    observations: Tensor,
    noise: Tensor,
    renoise_time: float | None = None,
    aggregate: str = "mean",
) -> tuple[Tensor, Tensor]:
    """QC's value of the best of K next chunks: (target critic's mean Q of a' [B], online critic's [B]).

    a' = argmax_k mean_e Q_e(s', a_k) over the candidates a_k = clip(g(s', e_k, 1)) (re-noised
    with `renoise_time`), picked by the online critic; its value is the target critic's
    ensemble mean mean_e Q'_e(s', a'). `aggregate` "min" (AgentConfig.target_aggregate, QC's
    `q_agg=min`): min_e in both places.
    """
    actions, online_q = best_candidate(policy, critic, observations, noise, renoise_time, aggregate)
    return ensemble_score(target_critic(observations, actions), aggregate), online_q


def expected_max_critic_loss(
    critic: nn.Module,
    target_critic: nn.Module,
    policy: nn.Module,
    batch: Batch,
    next_noise: Tensor,
    discount: float,
    renoise_time: float | None = None,
    aggregate: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """TD loss to y = r + discount * mask * Q'(s', a'), a' by `expected_max_q` (discount = gamma^H)."""
    next_q, online_q = expected_max_q(
        policy, critic, target_critic, batch.next_observations, next_noise, renoise_time, aggregate
    )
    target = batch.rewards + discount * batch.masks * next_q
    loss, info = td_loss(critic, batch, target)
    # how far the online critic's maximum sits above the target critic's value of the same chunk
    info.update({"critic/next_q": next_q.mean(), "critic/next_q_online": online_q.mean()})
    return loss, info


class BestOfNAgent(MFQLAgent):
    """MFQL's policy, critic ensemble, EMA target critic and optimisers; L = L_critic + L_MFI."""

    def update_noise(self, batch_size: int) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """The step's random draws, in the one order every update path uses: noises and flow times."""
        cfg, d = self.config, self.chunk_dim
        m = cfg.mfi_draws
        next_noise = self._noise(cfg.num_candidates, batch_size, d)
        t = sample_flow_times(m * batch_size, cfg.time_steps, self.generator, cfg.flow_time_sampling)
        t = t.to(self.device)
        return (next_noise, self._noise(m * batch_size, d)), t

    def step_losses(
        self, nets: dict, batch: Batch, noises: tuple[Tensor, Tensor], t: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """L_critic and L_MFI of one step and their info, for the networks in `nets`."""
        next_noise, mfi_noise = noises
        with matmul_autocast(self.precision, self.device.type):
            c_loss, c_info = agent_critic_loss(nets, batch, next_noise, self.config, expected_max_critic_loss)
            mfi_loss, mfi_info = mean_flow_identity_loss(nets["policy"], batch, mfi_noise, t, self.config)
        return c_loss, mfi_loss, {**c_info, **mfi_info}

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        """One gradient step; `step` counts updates from 1."""
        if self.compile:
            if self._fused is None:  # built at first use, after any resume (see MFQLAgent.update)
                self._fused = FusedUpdate(self, compile=True)
            return self._fused(batch, step)
        cfg = self.config
        noises, t = self.update_noise(batch.actions.shape[0])
        c_loss, mfi_loss, info = self.step_losses(self.nets(), batch, noises, t)
        self.actor_optimizer.zero_grad(set_to_none=True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        (c_loss + mfi_loss).backward()
        info["actor/grad_norm"] = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        info["critic/grad_norm"] = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        lrs = self.learning_rates(step)
        for group in self.actor_optimizer.param_groups:
            group["lr"] = lrs[0]
        self.actor_optimizer.step()
        self.critic_optimizer.step()
        ema_update(self.target_critic, self.critic, cfg.tau)
        if self.acting_policy is not self.policy:
            ema_update(self.acting_policy, self.policy, cfg.policy_ema_rate)
        return self.finish_update(step, {key: float(value.detach()) for key, value in info.items()}, lrs)

    def alpha_state(self, step: int) -> dict[str, Tensor]:
        return {}  # no alpha: the MFI loss is the whole actor loss

    def fused_objective(self, nets, batch, noises, t, alpha_state):
        c_loss, mfi_loss, info = self.step_losses(nets, batch, noises, t)
        return c_loss + mfi_loss, info

    def finish_update(self, step: int, info: dict[str, float], lrs: list[float]) -> dict[str, float]:
        info.update({"actor/lr": lrs[0], "total_loss": info["critic/loss"] + info["mfi/loss"]})
        return info

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        """The agent keeps no state beyond weights, optimisers and RNG (no alpha controller)."""
