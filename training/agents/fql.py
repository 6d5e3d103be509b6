"""Flow Q-learning (FQL, Park et al. 2025): the two-stage baseline MFQL is compared against.

A BC flow policy v(s, x_t, t) is trained by flow matching; a one-step policy mu(s, z) is
distilled from the flow's 10-step Euler solution while maximising Q. Critic, best-of-K and
EMA target are shared with MFQL (`training.agents.common`), so the comparison differs only in
how the policy is trained. FQL's own settings: one Adam with constant lr 3e-4 for every
network, no gradient clipping, K = 1 in the critic target.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from training.agents.common import (
    Batch,
    DeviceDraws,
    acting_copy,
    adam,
    agent_critic_loss,
    best_of_k,
    ema_update,
    frozen_critic_q,
)
from training.agents.fused_step import FusedUpdate, OptimizerGroup, UpdatePlan, target_emas
from training.config import AgentConfig, NetworkConfig
from training.networks import CriticEnsemble, MLPPolicy, OneStepMLPPolicy
from training.precision import Precision, matmul_autocast


def flow_matching_loss(
    velocity: nn.Module, batch: Batch, noise: Tensor, t: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """FQL's convention: x_0 = noise, x_1 = action, x_t = (1 - t) x_0 + t x_1, target x_1 - x_0."""
    x_t = (1 - t) * noise + t * batch.actions
    loss = (velocity(batch.observations, x_t, t) - (batch.actions - noise)).pow(2).mean()
    return loss, {"bc_flow/loss": loss}


@torch.no_grad()
def euler_flow_actions(velocity: nn.Module, observations: Tensor, noise: Tensor, steps: int) -> Tensor:
    """Integrate the BC flow from noise with `steps` Euler steps, then clip to [-1, 1]."""
    x = noise
    for i in range(steps):
        x = x + velocity(observations, x, noise.new_full((1, 1), i / steps)) / steps
    return x.clamp(-1, 1)


def flow_and_distillation_losses(
    velocity: nn.Module,
    policy: nn.Module,
    batch: Batch,
    noises: tuple[Tensor, Tensor],
    t: Tensor,
    config: AgentConfig,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """(flow-matching loss, distillation loss, the one-step policy's raw output, info): the BC
    flow's loss and the one-step policy's squared distance to the flow's Euler sample."""
    flow_noise, policy_noise = noises
    bc_loss, info = flow_matching_loss(velocity, batch, flow_noise, t)
    target = euler_flow_actions(velocity, batch.observations, policy_noise, config.flow_steps)
    raw = policy(batch.observations, policy_noise)
    return bc_loss, (raw - target).pow(2).mean(), raw, info


def fql_actor_loss(
    velocity: nn.Module,
    policy: nn.Module,
    critic: nn.Module,
    batch: Batch,
    noises: tuple[Tensor, Tensor],
    t: Tensor,
    config: AgentConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """bc_flow_loss + alpha * distill_loss + q_loss (critic parameters held constant)."""
    bc_loss, distill, raw, info = flow_and_distillation_losses(velocity, policy, batch, noises, t, config)
    q = frozen_critic_q(critic, batch.observations, raw.clamp(-1, 1))
    q_loss = -q.mean()
    if config.normalize_q_loss:
        q_loss = q_loss / q.abs().mean().detach()
    loss = bc_loss + config.alpha * distill + q_loss
    info.update(
        {
            "actor/loss": loss,
            "actor/distill_loss": distill,
            "actor/q_loss": q_loss,
            "actor/q": q.mean(),
            "actor/mse_to_data": (raw.clamp(-1, 1) - batch.actions).pow(2).mean(),
        }
    )
    return loss, info


class FQLAgent(DeviceDraws):
    """BC flow, one-step policy, critic ensemble and its EMA target, one optimiser."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        config: AgentConfig,
        network: NetworkConfig,
        offline_steps: int,
        seed: int = 0,
        precision: Precision = "fp32",
        compile: bool = False,
    ) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.precision = precision
        # compile: the whole update as one torch.compile'd program (training.agents.fused_step).
        self.compile = compile
        self.obs_dim, self.action_dim = obs_dim, action_dim
        # Q-chunking's FQL when H > 1: the BC flow, the one-step policy and the critic all act
        # on a chunk of H actions as one H * d vector.
        self.action_horizon = config.action_horizon
        self.chunk_dim = action_dim * config.action_horizon
        self.bc_flow = MLPPolicy(obs_dim, self.chunk_dim, network, zero_head=False)
        self.policy = OneStepMLPPolicy(obs_dim, self.chunk_dim, network)
        self.acting_policy = acting_copy(self.policy, config.policy_ema_rate)
        self.critic = CriticEnsemble(obs_dim, self.chunk_dim, network)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        parameters = [*self.bc_flow.parameters(), *self.policy.parameters(), *self.critic.parameters()]
        self.optimizer = adam(parameters, lr=config.actor_lr)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._fused: FusedUpdate | None = None  # built at the first update (after any resume)

    def nets(self) -> dict[str, nn.Module]:
        """The networks a step's losses read."""
        return {
            "bc_flow": self.bc_flow,
            "policy": self.policy,
            "critic": self.critic,
            "target_critic": self.target_critic,
        }

    def update_noise(self, batch_size: int) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """The step's random draws, in the one order every update path uses: noises and flow times."""
        cfg, d = self.config, self.chunk_dim
        next_noise = self._noise(cfg.num_candidates, batch_size, d)
        t = torch.rand(batch_size, 1, generator=self.generator).to(self.device)
        return (next_noise, self._noise(batch_size, d), self._noise(batch_size, d)), t

    def step_losses(
        self, nets: dict, batch: Batch, noises: tuple[Tensor, Tensor, Tensor], t: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """L_critic and FQL's actor loss of one step and their info, for the networks in `nets`."""
        next_noise, flow_noise, policy_noise = noises
        with matmul_autocast(self.precision, self.device.type):
            c_loss, c_info = self.critic_loss(nets, batch, next_noise)
            a_loss, a_info = self.actor_loss(nets, batch, (flow_noise, policy_noise), t)
        return c_loss, a_loss, {**c_info, **a_info}

    def critic_loss(self, nets: dict, batch: Batch, next_noise: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """FQL's TD loss: the target critic's value of its best of K next actions (K = 1 by default)."""
        return agent_critic_loss(nets, batch, next_noise, self.config)

    def actor_loss(
        self, nets: dict, batch: Batch, noises: tuple[Tensor, Tensor], t: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """FQL's actor loss: flow matching + alpha * distillation + the Q term."""
        return fql_actor_loss(nets["bc_flow"], nets["policy"], nets["critic"], batch, noises, t, self.config)

    def learning_rates(self, step: int) -> list[float]:
        return [self.config.actor_lr]

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        if self.compile:
            # Built at first use: it holds the parameters' and the Adam state's tensors, which a
            # resume (optimizer.load_state_dict) or StackedSeeds replaces.
            if self._fused is None:
                self._fused = FusedUpdate(self, compile=True)
            return self._fused(batch, step)
        cfg = self.config
        noises, t = self.update_noise(batch.actions.shape[0])
        c_loss, a_loss, info = self.step_losses(self.nets(), batch, noises, t)
        self.optimizer.zero_grad(set_to_none=True)
        (c_loss + a_loss).backward()
        self.optimizer.step()
        ema_update(self.target_critic, self.critic, cfg.tau)
        if self.acting_policy is not self.policy:
            ema_update(self.acting_policy, self.policy, cfg.policy_ema_rate)
        info = {key: float(value.detach()) for key, value in info.items()}
        return self.finish_update(step, info, self.learning_rates(step))

    # The fused update (training.agents.fused_step): the same step as one function of tensors.

    def update_plan(self) -> UpdatePlan:
        return UpdatePlan(
            modules={**self.nets(), **self.modules()},
            groups=(OptimizerGroup(self.optimizer, ("bc_flow", "policy", "critic")),),
            emas=target_emas(self),
            objective=self.fused_objective,
        )

    def alpha_state(self, step: int) -> dict[str, Tensor]:
        return {}  # FQL's alpha is a constant

    def fused_objective(self, nets, batch, noises, t, alpha_state):
        c_loss, a_loss, info = self.step_losses(nets, batch, noises, t)
        return c_loss + a_loss, info

    def finish_update(self, step: int, info: dict[str, float], lrs: list[float]) -> dict[str, float]:
        info.update({"alpha": self.config.alpha, "total_loss": info["critic/loss"] + info["actor/loss"]})
        return info

    @torch.no_grad()
    def act(
        self, observations: Tensor, num_candidates: int = 1, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if noise is None:
            noise = self._noise(num_candidates, observations.shape[0], self.chunk_dim)
        aggregate = self.config.critic_aggregate
        actions, q, _ = best_of_k(
            self.acting_policy, self.target_critic, observations, noise, None, aggregate
        )
        return actions, q

    def modules(self) -> dict[str, nn.Module]:
        modules = {
            "policy": self.policy,
            "bc_flow": self.bc_flow,
            "critic": self.critic,
            "target_critic": self.target_critic,
        }
        if self.acting_policy is not self.policy:
            modules["acting_policy"] = self.acting_policy
        return modules

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        """FQL keeps no state beyond weights, optimiser and RNG."""
