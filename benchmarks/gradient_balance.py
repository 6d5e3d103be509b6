"""How strongly the BC term and the Q term pull on the one-step policy at a checkpoint.

alpha is the one knob tuned per task; this measures what it balances. For a trained MFQL or
FQL checkpoint it draws batches from the run's dataset and reports, for the policy's
parameters:
- the gradient norm of the BC term (MFQL: alpha * L_MFI; FQL: alpha * distillation loss) and
  of the Q term (L_actor: -Q plus the bound penalty), per batch;
- the norm of each gradient averaged over the batches: a term that is mostly noise shrinks by
  about 1/sqrt(batches), a consistent one keeps its size;
- the cosine between the two gradients.

    python benchmarks/gradient_balance.py runs/default-cube-single [--batches 8]

Prints JSON. Reads the dataset named in the checkpoint's config (like mfql-train does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.agents import build_agent
from training.agents.fql import fql_actor_loss
from training.agents.mfql import actor_loss, mean_flow_identity_loss, sample_flow_times
from training.checkpoint import load_policy_checkpoint
from training.data.ogbench_files import load_task_datasets
from training.replay_buffer import ReplayBuffer
from training.training_state import restore_training_state


def bc_and_q_losses(method: str, agent, batch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha-weighted BC loss, Q loss) of one batch, as the agent's update computes them."""
    b, d = batch.actions.shape
    if method == "mfql":
        t = sample_flow_times(b, agent.config.time_steps, agent.generator)
        mfi, _ = mean_flow_identity_loss(agent.policy, batch, agent._noise(b, d), t, agent.config)
        q_loss, _ = actor_loss(agent.policy, agent.critic, batch, agent._noise(b, d), agent.config)
        return agent.alpha_controller.value(step) * mfi, q_loss
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="run or step directory")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--dataset-dir", type=Path, help="default: the one the run was trained on")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    checkpoint = load_policy_checkpoint(args.checkpoint)
    config = checkpoint.config
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
    buffer = ReplayBuffer(train_set, mean, std, 0, config.seed)
    restore_training_state(checkpoint.path, agent, buffer, checkpoint.model)
    parameters = list(agent.policy.parameters())
    bc_grads, q_grads = [], []
    for _ in range(args.batches):
        bc, q = bc_and_q_losses(config.agent, agent, buffer.sample(config.batch_size), checkpoint.step)
        bc_grads.append(flat_gradient(bc, parameters))
        q_grads.append(flat_gradient(q, parameters))
    bc_stack, q_stack = torch.stack(bc_grads), torch.stack(q_grads)
    cosine = torch.nn.functional.cosine_similarity(bc_stack, q_stack, dim=1)
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
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
