"""MeanFlow Q-learning (MFQL), ALGORITHM.md: the method's maths and nothing else.

`MFQLAgent.update(batch, step)` performs one gradient step on
L = L_critic + L_actor + alpha * L_MFI and returns an info dict of namespaced floats.
Every loss is computed with the pre-update parameters, as the reference's single `jax.grad`
over the total loss does; the critic receives only the critic loss's gradient and the actor
loss sees the critic's parameters as constants.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import jvp

from training.agents.common import (
    Batch,
    DeviceDraws,
    acting_copy,
    adam,
    agent_critic_loss,
    best_of_k,
    ema_update,
    frozen_critic_q,
    one_step_actions,
)
from training.agents.fused_step import FusedUpdate, OptimizerGroup, UpdatePlan, target_emas
from training.config import FLOW_TIME_SAMPLINGS, AgentConfig, FlowTimeSampling, NetworkConfig
from training.networks import CriticEnsemble, build_policy
from training.precision import Precision, matmul_autocast
from training.schedules import AlphaController, actor_learning_rate, adapted_alpha, schedule_horizon


def sample_flow_times(
    batch_size: int, time_steps: int, generator: torch.Generator, sampling: FlowTimeSampling = "uniform"
) -> Tensor:
    """t on the grid {1/N, ..., 1} (N = time_steps), or continuous when N > 1000.

    "uniform" (the paper's): every grid point, or every t in (0, 1), equally likely.
    "linear" (a study option): probability proportional to t, i.e. t = sqrt(u) with u uniform
    when continuous, grid point i/N with probability i / (N (N + 1) / 2) on the grid.
    """
    if sampling not in FLOW_TIME_SAMPLINGS:
        raise ValueError(f"unknown flow-time sampling {sampling!r}; expected one of {FLOW_TIME_SAMPLINGS}")
    if time_steps > 1000:
        u = torch.rand(batch_size, 1, generator=generator)
        return u.sqrt() if sampling == "linear" else u
    if sampling == "linear":
        weights = torch.arange(1, time_steps + 1, dtype=torch.float64)
        index = torch.multinomial(weights, batch_size, replacement=True, generator=generator) + 1
        return (index.float() / time_steps).unsqueeze(1)
    index = torch.randint(1, time_steps + 1, (batch_size, 1), generator=generator)
    return index.float() / time_steps


def flow_time_derivative(
    policy: nn.Module, observations: Tensor, z: Tensor, t: Tensor, velocity: Tensor
) -> tuple[Tensor, Tensor]:
    """g(s, z, t) and its total derivative along the flow, dg/dt = JVP with tangent (v, 1).

    s is held fixed; one forward-mode pass (`torch.func.jvp`) gives both values.
    """
    return jvp(lambda z_, t_: policy(observations, z_, t_), (z, t), (velocity, torch.ones_like(t)))


def mean_flow_identity_target(
    policy: nn.Module, observations: Tensor, actions: Tensor, noise: Tensor, t: Tensor, target_clip: float
) -> tuple[Tensor, Tensor]:
    """g(s, z_t, t) and its MeanFlow-identity target, ALGORITHM.md (1).

    With b = 0, u = v - t du/dt and g = z - u give g_tgt = z_t + (t - 1) v - t dg/dt.
    The target is detached and clipped to [-target_clip, target_clip].
    """
    z_t = (1 - t) * actions + t * noise
    velocity = noise - actions
    g, dg_dt = flow_time_derivative(policy, observations, z_t, t, velocity)
    target = z_t + (t - 1) * velocity - t * dg_dt
    return g, target.detach().clamp(-target_clip, target_clip)


def adaptive_l2_loss(prediction: Tensor, target: Tensor, gamma: float, c: float) -> Tensor:
    """MeanFlow's adaptive L2: mean(sg(w) * delta), delta = mean_d err^2, w = (delta + c)^-(1 - gamma)."""
    delta = (prediction - target).pow(2).mean(dim=-1)
    weight = (delta.detach() + c).pow(-(1 - gamma)).clamp(1e-6, 1e6)
    return (weight * delta).mean()


def mean_flow_identity_loss(
    policy: nn.Module, batch: Batch, noise: Tensor, t: Tensor, config: AgentConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Adaptive-L2 MFI loss over M = len(noise) / B independent (e, t) draws per state.

    M = 1 is the paper's single-sample estimate. M > 1 (`mfi_draws`, a study option) averages
    the same loss over more draws of the same states: the same expected gradient, with the
    variance of the (e, t) sampling divided by M.
    """
    draws = noise.shape[0] // batch.observations.shape[0]
    observations, actions = batch.observations, batch.actions
    if draws > 1:
        observations, actions = observations.repeat(draws, 1), actions.repeat(draws, 1)
    g, target = mean_flow_identity_target(policy, observations, actions, noise, t, config.target_clip)
    loss = adaptive_l2_loss(g, target, config.adaptive_gamma, config.adaptive_c)
    return loss, {"mfi/loss": loss, "mfi/mse": (g - target).pow(2).mean()}


@torch.no_grad()
def self_distillation_target(
    policy: nn.Module, observations: Tensor, noise: Tensor, one_step: Tensor, steps: int
) -> Tensor:
    """A `steps`-step deterministic sample of the policy for the same noise, clipped to [-1, 1].

    A study option (AgentConfig.anchor_weight), not in the paper. g(s, z_t, t) = z_t - u with
    u MeanFlow's average velocity over [0, t], so its estimate of the data end is
    x0 = z_t - t u = (1 - t) z_t + t g. Starting from x0 = `one_step` = g(s, e, 1) (the noise
    end, t = 1), each further step t_k = 1 - k / steps re-noises DDIM-style with the noise the
    current estimate implies, z = (1 - t_k) x0 + t_k e_hat, and asks the network again from
    there. For an exact MeanFlow map the sample lands on the data whatever the one-step action
    was (tests/training/test_anchor.py), so it pulls an action the Q term moved back toward the
    data for this e; a trained network's sample follows its one-step action much more closely
    (anchor loss about 0.001 in the study, docs/results/mfql-study.md), so the pull is weak.
    """
    x0, e_hat = one_step.detach(), noise
    for k in range(1, steps):
        t = 1.0 - k / steps
        z = (1 - t) * x0 + t * e_hat
        g = policy(observations, z, z.new_full((1, 1), t))
        x0 = (1 - t) * z + t * g
        e_hat = (z - (1 - t) * x0) / t
    return x0.clamp(-1, 1)


def actor_loss(
    policy: nn.Module, critic: nn.Module, batch: Batch, noise: Tensor, config: AgentConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """-Q of the one-step action plus the [-1, 1] bound penalty (ALGORITHM.md (2)).

    With `config.anchor_weight` > 0 (a study option, off in the paper) it also regresses the
    one-step action on `self_distillation_target` for the same noise.
    The critic is evaluated with detached parameters, so this loss trains only the policy.
    """
    raw = one_step_actions(policy, batch.observations, noise)
    bound = torch.relu(raw - 1).mean() + torch.relu(-1 - raw).mean()
    q = frozen_critic_q(critic, batch.observations, raw.clamp(-1, 1))
    q_loss = -q.mean()
    if config.normalize_q_loss:
        q_loss = q_loss / q.abs().mean().detach()
    loss = q_loss + config.bound_loss_weight * bound
    anchor = None
    if config.anchor_weight > 0:
        target = self_distillation_target(policy, batch.observations, noise, raw, config.anchor_steps)
        anchor = (raw - target).pow(2).mean()
        loss = loss + config.anchor_weight * anchor
    info = {
        "actor/loss": loss,
        "actor/q_loss": q_loss,
        "actor/bound_loss": bound,
        "actor/q": q.mean(),
        "actor/mse_to_data": (raw.clamp(-1, 1) - batch.actions).pow(2).mean(),
    }
    if anchor is not None:
        info["actor/anchor_loss"] = anchor
    return loss, info


class MFQLAgent(DeviceDraws):
    """Policy, critic ensemble, EMA target critic, optimisers and the alpha controller."""

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
        # compile: the whole update (losses, backward, clipped Adam, EMA, alpha) as one
        # torch.compile'd program (training.agents.fused_step); the maths is the eager code's.
        self.compile = compile
        self.offline_steps = schedule_horizon(offline_steps, config)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        # A chunk of H actions is one H * d vector to every network and loss (H = 1: one action).
        self.action_horizon = config.action_horizon
        self.chunk_dim = action_dim * config.action_horizon
        self.policy = build_policy(obs_dim, self.chunk_dim, network)
        # `policy_ema_rate` > 0 (a study option): an EMA of the policy's weights acts
        self.acting_policy = acting_copy(self.policy, config.policy_ema_rate)
        self.critic = CriticEnsemble(obs_dim, self.chunk_dim, network)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_controller = AlphaController(config, self.offline_steps)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._fused: FusedUpdate | None = None  # built at the first update (after any resume)

    def nets(self) -> dict[str, nn.Module]:
        """The networks a step's losses read."""
        return {"policy": self.policy, "critic": self.critic, "target_critic": self.target_critic}

    def update_noise(self, batch_size: int) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """The step's random draws, in the one order every update path uses: noises and flow times."""
        cfg, d = self.config, self.chunk_dim
        m = cfg.mfi_draws
        next_noise = self._noise(cfg.num_candidates, batch_size, d)
        t = sample_flow_times(m * batch_size, cfg.time_steps, self.generator, cfg.flow_time_sampling)
        t = t.to(self.device)
        return (next_noise, self._noise(m * batch_size, d), self._noise(batch_size, d)), t

    def step_losses(
        self, nets: dict, batch: Batch, noises: tuple[Tensor, Tensor, Tensor], t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """L_critic, L_MFI, L_actor of one step and their info, for the networks in `nets`."""
        next_noise, mfi_noise, actor_noise = noises
        cfg = self.config
        with matmul_autocast(self.precision, self.device.type):
            c_loss, c_info = agent_critic_loss(nets, batch, next_noise, cfg)
            mfi_loss, mfi_info = mean_flow_identity_loss(nets["policy"], batch, mfi_noise, t, cfg)
            a_loss, a_info = actor_loss(nets["policy"], nets["critic"], batch, actor_noise, cfg)
        return c_loss, mfi_loss, a_loss, {**c_info, **mfi_info, **a_info}

    def learning_rates(self, step: int) -> list[float]:
        """Learning rates of step `step` (from 1): the actor's schedule, the critic's constant."""
        return [actor_learning_rate(step - 1, self.offline_steps, self.config), self.config.critic_lr]

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        """One gradient step; `step` counts updates from 1."""
        if self.compile:
            # Built at first use: it holds the parameters' and the Adam state's tensors, which a
            # resume (optimizer.load_state_dict) or StackedSeeds replaces.
            if self._fused is None:
                self._fused = FusedUpdate(self, compile=True)
            return self._fused(batch, step)
        cfg = self.config
        noises, t = self.update_noise(batch.actions.shape[0])
        # Forward passes only: backward runs each op in its forward's dtype, Adam in float32.
        c_loss, mfi_loss, a_loss, info = self.step_losses(self.nets(), batch, noises, t)

        alpha = self.alpha_controller.value(step)
        if self.alpha_controller.due(step):
            alpha = self.alpha_controller.record(step, mfi_loss.item())

        self.actor_optimizer.zero_grad(set_to_none=True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        (c_loss + a_loss + alpha * mfi_loss).backward()
        actor_grad = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        critic_grad = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        actor_lr = self.learning_rates(step)[0]
        for group in self.actor_optimizer.param_groups:
            group["lr"] = actor_lr
        self.actor_optimizer.step()
        self.critic_optimizer.step()
        ema_update(self.target_critic, self.critic, self.config.tau)
        if self.acting_policy is not self.policy:
            ema_update(self.acting_policy, self.policy, cfg.policy_ema_rate)

        info = {**info, "actor/grad_norm": actor_grad, "critic/grad_norm": critic_grad}
        out = {key: float(value.detach()) for key, value in info.items()}
        out["alpha"] = float(alpha)
        return self._with_totals(out, actor_lr)

    def _with_totals(self, info: dict[str, float], actor_lr: float) -> dict[str, float]:
        info.update(
            {
                "actor/lr": actor_lr,
                "total_loss": info["critic/loss"] + info["actor/loss"] + info["alpha"] * info["mfi/loss"],
            }
        )
        return info

    # The fused update (training.agents.fused_step): the same step as one function of tensors.

    def update_plan(self) -> UpdatePlan:
        cfg = self.config
        return UpdatePlan(
            modules={**self.nets(), **self.modules()},
            groups=(
                OptimizerGroup(self.actor_optimizer, ("policy",), cfg.grad_clip, "actor/grad_norm"),
                OptimizerGroup(self.critic_optimizer, ("critic",), cfg.grad_clip, "critic/grad_norm"),
            ),
            emas=target_emas(self),
            objective=self.fused_objective,
        )

    def alpha_state(self, step: int) -> dict[str, Tensor]:
        return self.alpha_controller.tensor_state(step)

    def fused_objective(self, nets, batch, noises, t, alpha_state):
        """L_critic + L_actor + alpha L_MFI, alpha adapted in the graph from this step's L_MFI."""
        c_loss, mfi_loss, a_loss, info = self.step_losses(nets, batch, noises, t)
        alpha = adapted_alpha(alpha_state, mfi_loss.detach(), self.config)
        return c_loss + a_loss + alpha.to(mfi_loss.dtype) * mfi_loss, {**info, "alpha": alpha}

    def finish_update(self, step: int, info: dict[str, float], lrs: list[float]) -> dict[str, float]:
        """The host's side of a fused step: the alpha controller records, totals are added."""
        if self.alpha_controller.due(step):
            self.alpha_controller.record(step, info["mfi/loss"])
        return self._with_totals(info, lrs[0])

    @torch.no_grad()
    def act(
        self, observations: Tensor, num_candidates: int = 1, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Actions [B, H * d] and their Q [B] for normalised observations [B, obs_dim].

        Candidates are ranked by the target critic's ensemble mean, as the reference's
        `sample_actions_best` does (or its minimum: AgentConfig.critic_aggregate); `noise`
        [K, B, d] makes the result exact and replayable.
        """
        if noise is None:
            noise = self._noise(num_candidates, observations.shape[0], self.chunk_dim)
        cfg = self.config
        actions, q, _ = best_of_k(
            self.acting_policy,
            self.target_critic,
            observations,
            noise,
            cfg.renoise_time,
            cfg.critic_aggregate,
        )
        return actions, q

    def modules(self) -> dict[str, nn.Module]:
        modules = {"policy": self.policy, "critic": self.critic, "target_critic": self.target_critic}
        if self.acting_policy is not self.policy:
            modules["acting_policy"] = self.acting_policy
        return modules

    def extra_state(self) -> dict:
        return {"alpha_controller": self.alpha_controller.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.alpha_controller.load_state_dict(state["alpha_controller"])

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_optimizer": self.actor_optimizer, "critic_optimizer": self.critic_optimizer}
