"""One-step best-of-N from a distilled BC flow (`--agent bon-distill`): QC's actor at one evaluation per candidate.

Q-chunking's best-of-n actor (Li, Zhou and Levine 2025, arXiv 2507.07969, `actor_type=best-of-n`)
draws 32 samples of a BC flow, each integrated with 10 Euler steps, and keeps the one its chunked
critic rates highest. This agent keeps that recipe and replaces the 10-step sampler by a one-step
network distilled from the flow with no Q term. It departs from ALGORITHM.md's best-of-N extension
("Extensions beside the paper's method") in its generator alone, a distilled flow where ALGORITHM.md
names the MeanFlow policy, for the evidence below (docs/method.md):

- a BC flow v(s, x_t, t) trained by flow matching (FQL's loss and convention);
- a one-step network mu(s, e) trained by regression alone onto the flow's 10-step Euler sample
  for the same noise, || mu(s, e) - clip(Flow_10(s, e)) ||^2: FQL's distillation term without
  its Q term, so no gradient from Q reaches mu and mu samples the behaviour, as the flow does;
- acting: K candidates mu(s, e_k), clipped, and the argmax of the critic ensemble's mean (one
  network evaluation per candidate);
- the critic's target: QC's expected-max Q over K one-step candidates at s', picked by the
  online critic and valued by the target critic's ensemble mean, as `bon`'s
  (`training.agents.best_of_n.expected_max_critic_loss`).

Why (docs/results/best-of-n.md, round 15): on puzzle-3x3 task4 a 100k QC-FQL critic ranking
32 samples of its own 10-step flow solved 0.64 of 50 episodes and ranking 32 of its Q-pushed
one-step policy 0.02; the same one-step network distilled onto the flow with no Q term (5k
steps, `training.studies.flow_distillation`) solved 0.58 on the same episodes. `bon`'s MeanFlow
generator, trained from the data by the MFI loss, spread half as wide again as the flow and its
best of 32 left the data's workspace. Distilling a flow gives a one-step generator as good as the
flow's samples.

Against FQL (`--agent fql`) the networks, the one Adam (constant lr 3e-4, no clipping) and the
noise draws are the same; the actor loss has no Q term and no alpha (the flow-matching and
distillation losses act on disjoint parameters, and Adam is invariant to their scales), and the
target is the expected max over K instead of FQL's one candidate valued by the target critic.
"""

from __future__ import annotations

from torch import Tensor, nn

from training.agents.best_of_n import expected_max_critic_loss
from training.agents.common import Batch, agent_critic_loss
from training.agents.fql import FQLAgent, flow_and_distillation_losses
from training.config import AgentConfig


def distillation_actor_loss(
    velocity: nn.Module,
    policy: nn.Module,
    batch: Batch,
    noises: tuple[Tensor, Tensor],
    t: Tensor,
    config: AgentConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """bc_flow_loss + distill_loss: the flow by flow matching, mu onto the flow's samples, no Q."""
    bc_loss, distill, raw, info = flow_and_distillation_losses(velocity, policy, batch, noises, t, config)
    loss = bc_loss + distill
    info.update(
        {
            "actor/loss": loss,
            "actor/distill_loss": distill,
            "actor/mse_to_data": (raw.clamp(-1, 1) - batch.actions).pow(2).mean(),
        }
    )
    return loss, info


class DistilledBestOfNAgent(FQLAgent):
    """FQL's BC flow, one-step network, critic ensemble, EMA target and optimiser; L = L_critic
    (expected max over K) + L_flow + L_distill."""

    def critic_loss(self, nets: dict, batch: Batch, next_noise: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """QC's expected max over K one-step candidates (never re-noised: --renoise-target is refused)."""
        return agent_critic_loss(nets, batch, next_noise, self.config, expected_max_critic_loss)

    def actor_loss(
        self, nets: dict, batch: Batch, noises: tuple[Tensor, Tensor], t: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return distillation_actor_loss(nets["bc_flow"], nets["policy"], batch, noises, t, self.config)

    def finish_update(self, step: int, info: dict[str, float], lrs: list[float]) -> dict[str, float]:
        info["total_loss"] = info["critic/loss"] + info["actor/loss"]
        return info
