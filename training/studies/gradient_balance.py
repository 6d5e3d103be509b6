"""How strongly the BC term and the Q term pull on the one-step policy at a checkpoint.

alpha is the one knob tuned per task; this measures what it balances. For a trained MFQL or
FQL checkpoint it draws batches from the run's dataset and reports, for the policy's
parameters:
- the gradient norm of the BC term (MFQL: alpha * L_MFI, plus the self-distillation anchor
  when the run used `--anchor-weight`; FQL: alpha * distillation loss) and of the Q term
  (-Q of the one-step action; MFQL's bound penalty, zero inside [-1, 1], left out), per batch;
- the norm of each gradient averaged over the batches: a term that is mostly noise shrinks by
  about 1/sqrt(batches), a consistent one keeps its size;
- the cosine between the two gradients;
- MFQL only: the norm of the BC gradient when the MFI loss averages M = 1, 4, 16 (e, t) draws
  per state of the same batch (`--mfi-draws`: how much of it is sampling noise), and its
  norm restricted to bins of t (where along the flow the noise comes from);
- the cosine between the step Adam would actually take (from the optimiser's moments in the
  checkpoint) and the Q term's descent direction: how much of the Q signal survives Adam.

    python -m training.studies.gradient_balance runs/default-cube-single [--batches 8]

Prints JSON. Reads the dataset named in the checkpoint's config (like mfql-train does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.agents import build_agent
from training.agents.fql import fql_actor_loss
from training.agents.mfql import (
    actor_loss,
    adaptive_l2_loss,
    mean_flow_identity_loss,
    mean_flow_identity_target,
    sample_flow_times,
)
from training.checkpoint import load_policy_checkpoint
from training.data.ogbench_files import load_task_datasets
from training.replay_buffer import ReplayBuffer
from training.training_state import restore_training_state


def bc_and_q_losses(method: str, agent, batch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted BC loss, Q loss) of one batch, as the agent's update computes them.

    MFQL's BC loss is alpha x MFI, plus anchor_weight x the self-distillation anchor when the
    run used one (`--anchor-weight`); its Q loss is the actor's -Q term (the [-1, 1] bound
    penalty, zero inside the bounds, left out).
    """
    b, d = batch.actions.shape
    if method == "mfql":
        cfg = agent.config
        t = sample_flow_times(b, cfg.time_steps, agent.generator, cfg.flow_time_sampling)
        mfi, _ = mean_flow_identity_loss(agent.policy, batch, agent._noise(b, d), t, cfg)
        _, info = actor_loss(agent.policy, agent.critic, batch, agent._noise(b, d), cfg)
        bc = agent.alpha_controller.value(step) * mfi
        if "actor/anchor_loss" in info:
            bc = bc + cfg.anchor_weight * info["actor/anchor_loss"]
        return bc, info["actor/q_loss"]
    # FQL: its own actor loss; the BC flow's loss does not touch the one-step policy.
    t = torch.rand(b, 1, generator=agent.generator)
    noises = (agent._noise(b, d), agent._noise(b, d))
    _, info = fql_actor_loss(agent.bc_flow, agent.policy, agent.critic, batch, noises, t, agent.config)
    return agent.config.alpha * info["actor/distill_loss"], info["actor/q_loss"]


def flat_gradient(loss: torch.Tensor, parameters: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True)  # FQL: shared forward
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, p in zip(grads, parameters, strict=True)
        ]
    )


def mfi_draw_gradients(agent, batch, step: int, draws: list[int]) -> dict[str, float]:
    """Norm of the alpha * MFI gradient when the loss averages M (e, t) draws per state."""
    b, d = batch.actions.shape
    alpha = agent.alpha_controller.value(step)
    parameters = list(agent.policy.parameters())
    norms = {}
    for m in draws:
        t = sample_flow_times(
            m * b, agent.config.time_steps, agent.generator, agent.config.flow_time_sampling
        )
        loss, _ = mean_flow_identity_loss(agent.policy, batch, agent._noise(m * b, d), t, agent.config)
        norms[f"M={m}"] = flat_gradient(alpha * loss, parameters).norm().item()
    return norms


def mfi_gradient_by_time(agent, batch, step: int, edges: list[float]) -> dict[str, float]:
    """Norm of the alpha * MFI gradient from the rows whose t falls in each bin (each bin's rows
    contribute their share of the batch mean, so the bins' gradients sum to the whole)."""
    b, d = batch.actions.shape
    cfg = agent.config
    t = sample_flow_times(b, cfg.time_steps, agent.generator, cfg.flow_time_sampling)
    g, target = mean_flow_identity_target(
        agent.policy, batch.observations, batch.actions, agent._noise(b, d), t, cfg.target_clip
    )
    alpha = agent.alpha_controller.value(step)
    parameters = list(agent.policy.parameters())
    norms = {}
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        rows = ((t[:, 0] > low) & (t[:, 0] <= high)).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        share = adaptive_l2_loss(g[rows], target[rows], cfg.adaptive_gamma, cfg.adaptive_c) * len(rows) / b
        norms[f"t in ({low:g}, {high:g}]"] = flat_gradient(alpha * share, parameters).norm().item()
    return norms


def adam_step_direction(
    optimizer: torch.optim.Optimizer, parameters: list[torch.Tensor]
) -> torch.Tensor | None:
    """The direction of Adam's next step for `parameters` (bias-corrected m / (sqrt(v) + eps)),
    as a descent direction (the update is -lr times it); None if the checkpoint has no moments."""
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    pieces = []
    for p in parameters:
        state = optimizer.state.get(p)
        if not state:
            return None
        step = float(state["step"])
        m_hat = state["exp_avg"] / (1 - beta1**step)
        v_hat = state["exp_avg_sq"] / (1 - beta2**step)
        pieces.append((m_hat / (v_hat.sqrt() + group["eps"])).flatten())
    return torch.cat(pieces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="run or step directory")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--dataset-dir", type=Path, help="default: the one the run was trained on")
    parser.add_argument("--mfi-draws", default="1,4,16", help="MFQL: M values for the draws gradient")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    checkpoint = load_policy_checkpoint(args.checkpoint)
    config = checkpoint.config
    if config.agent in ("bon", "bon-distill"):
        parser.error(f"{checkpoint.path} is a {config.agent} run: its actor has no Q term to balance")
    train_set, _ = load_task_datasets(config.env_name, args.dataset_dir or Path(config.dataset_dir))
    mean, std = checkpoint.model["normalizer.mean"].numpy(), checkpoint.model["normalizer.std"].numpy()
    agent = build_agent(
        config.agent,
        checkpoint.obs_dim,
        checkpoint.action_dim,
        config.agent_config,
        config.network,
        config.offline_steps,
        config.seed,
    )
    agent_config = config.agent_config  # a chunked run's batches are chunks of its horizon
    buffer = ReplayBuffer(
        train_set, mean, std, 0, config.seed, agent_config.action_horizon, agent_config.discount
    )
    restore_training_state(checkpoint.path, agent, buffer, checkpoint.model)
    parameters = list(agent.policy.parameters())
    bc_grads, q_grads = [], []
    for _ in range(args.batches):
        bc, q = bc_and_q_losses(config.agent, agent, buffer.sample(config.batch_size), checkpoint.step)
        bc_grads.append(flat_gradient(bc, parameters))
        q_grads.append(flat_gradient(q, parameters))
    bc_stack, q_stack = torch.stack(bc_grads), torch.stack(q_grads)
    cosine = torch.nn.functional.cosine_similarity(bc_stack, q_stack, dim=1)
    optimizer = next(iter(agent.optimizers().values()))
    adam = adam_step_direction(optimizer, parameters)
    report = {
        "checkpoint": str(checkpoint.path),
        "agent": config.agent,
        "step": checkpoint.step,
        "batches": args.batches,
        "bc_grad_norm_per_batch": round(bc_stack.norm(dim=1).mean().item(), 3),
        "q_grad_norm_per_batch": round(q_stack.norm(dim=1).mean().item(), 3),
        "bc_grad_norm_of_mean": round(bc_stack.mean(dim=0).norm().item(), 3),
        "q_grad_norm_of_mean": round(q_stack.mean(dim=0).norm().item(), 3),
        "cosine_bc_q": round(cosine.mean().item(), 3),
        # Adam's step vs the Q term's gradient (both descent directions of their losses)
        "cosine_adam_step_q": None
        if adam is None
        else round(torch.nn.functional.cosine_similarity(adam, q_stack.mean(dim=0), dim=0).item(), 3),
        "cosine_adam_step_bc": None
        if adam is None
        else round(torch.nn.functional.cosine_similarity(adam, bc_stack.mean(dim=0), dim=0).item(), 3),
    }
    if config.agent == "mfql":
        draws = [int(m) for m in args.mfi_draws.split(",")]
        per_batch = [
            mfi_draw_gradients(agent, buffer.sample(config.batch_size), checkpoint.step, draws)
            for _ in range(args.batches)
        ]
        report["bc_grad_norm_by_mfi_draws"] = {
            key: round(sum(n[key] for n in per_batch) / len(per_batch), 3) for key in per_batch[0]
        }
        edges = [0.0, 0.25, 0.5, 0.75, 1.0]
        by_time = [
            mfi_gradient_by_time(agent, buffer.sample(config.batch_size), checkpoint.step, edges)
            for _ in range(args.batches)
        ]
        report["bc_grad_norm_by_t_bin"] = {
            key: round(sum(n.get(key, 0.0) for n in by_time) / len(by_time), 3) for key in by_time[0]
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
