"""How well a checkpoint's one-step generator covers the dataset's actions, and what the critic thinks of it.

For `--states` dataset transitions (s, a) of the run's own dataset, draws K one-step
candidates per state from the policy that acts (MFQL: g(s, e, 1); FQL: its one-step policy)
and reports, in the action space [-1, 1]^d:
- `nearest_sq_dist`: squared distance from the dataset action to its nearest candidate,
  averaged over states (coverage: how close the generator comes to what the data did);
- `mean_sq_dist`: average squared distance of one candidate to the dataset action;
- `spread`: per-dimension std of the K candidates, averaged (how stochastic the generator is);
- `q_candidates` / `q_dataset`: the target critic's ensemble mean of the candidates and of the
  dataset action, and `q_best_minus_dataset`: how much better the critic rates the best
  candidate than what the data did;
- FQL only, `bc_flow_*`: the same numbers for its 10-step BC flow (a multi-step generator
  trained by flow matching on the same data), as a yardstick of what cloning alone reaches.

`--noise-scale C` draws the one-step candidates from noise scaled by C (acting's `--noise-scale`;
the BC flow's yardstick keeps unscaled noise, as QC samples it).

`--best-of 1,5,32` looks at what acting picks: for each K, the critic's best of the first K
candidates per state (ranked as the run acts, by the ensemble mean or min), its squared distance
to the dataset action (`sq_dist`), how much higher the critic rates it than the data's action
(`q_gain`), and its mean |value| per action dimension (`abs_action`, over states and a chunk's
actions) beside the dataset's (`dataset_abs_action`): whether a larger K picks actions that move
less or otherwise than the data, and the critic rates more highly the further they are from it.

`--states-from DIR` scores the states an evaluation reached instead of the dataset's: the
requests `mfql-eval --record-dir DIR` wrote, each with the action (chunk) the evaluated policy
chose there standing in for the dataset action (`reference: recorded`), so distances and Q gains
are against what that rollout did.

    python -m training.studies.generator_quality runs/study/lr-constant-seed0 [--states 2048 --k 16]

Prints JSON. Reads the dataset named in the checkpoint's config, as mfql-train does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from training.agents.common import ensemble_score, one_step_actions
from training.agents.fql import euler_flow_actions
from training.checkpoint import load_policy_checkpoint
from training.config import FLOW_DISTILLED_AGENTS
from training.data.ogbench_files import load_task_datasets
from training.inference import bc_flow_of, serving_policy_from_checkpoint
from training.replay_buffer import ReplayBuffer
from training.rollout_recording import read_requests


def coverage(candidates: Tensor, actions: Tensor, horizon: int = 1) -> dict[str, float]:
    """candidates [K, B, d], dataset actions [B, d] -> distance and spread statistics.

    For chunks (d = horizon * action_dim) the squared distance is per action of the chunk, so
    the numbers compare with a one-action run's.
    """
    sq = (candidates - actions.unsqueeze(0)).pow(2).sum(dim=-1) / horizon  # [K, B]
    return {
        "nearest_sq_dist": round(sq.min(dim=0).values.mean().item(), 4),
        "mean_sq_dist": round(sq.mean().item(), 4),
        "spread": round(candidates.std(dim=0).mean().item(), 4),
    }


def candidate_values(critic, observations: Tensor, candidates: Tensor) -> Tensor:
    """Every ensemble member's Q [E, K, B] of candidates [K, B, d] at observations [B, obs_dim]:
    its mean is the candidates' Q, `ensemble_score` of it the acting rank (one critic pass)."""
    k, b, d = candidates.shape
    repeated = observations.unsqueeze(0).expand(k, -1, -1).reshape(k * b, -1)
    return critic(repeated, candidates.reshape(k * b, d)).reshape(-1, k, b)


def abs_per_dimension(actions: Tensor, action_dim: int) -> list[float]:
    """Mean |value| of each action dimension over [..., H * action_dim] actions (chunks split)."""
    return [round(v, 4) for v in actions.reshape(-1, action_dim).abs().mean(dim=0).tolist()]


def chosen_view(
    candidates: Tensor,
    scores: Tensor,
    q: Tensor,
    actions: Tensor,
    q_data: Tensor,
    action_dim: int,
    ks: list[int],
) -> dict[str, dict]:
    """What best-of-K picks, for each K in `ks`: the candidate of the first K [K, B, d] with the
    highest `scores` [K, B] (the acting rank), against the dataset actions [B, d] and their Q."""
    horizon = actions.shape[-1] // action_dim
    view = {}
    for k in ks:
        index = scores[:k].argmax(dim=0)  # [B]
        chosen = candidates[:k].gather(0, index.view(1, -1, 1).expand(1, -1, candidates.shape[-1]))[0]
        chosen_q = q[:k].gather(0, index.view(1, -1))[0]
        view[f"K={k}"] = {
            "sq_dist": round(((chosen - actions).pow(2).sum(dim=-1) / horizon).mean().item(), 4),
            "q_gain": round((chosen_q - q_data).mean().item(), 3),
            "abs_action": abs_per_dimension(chosen, action_dim),
        }
    return view


def critic_view(q: Tensor, q_data: Tensor) -> dict[str, float]:
    """Q of the candidates [K, B] (the ensemble mean) against Q of the dataset actions [B]."""
    return {
        "q_candidates": round(q.mean().item(), 3),
        "q_dataset": round(q_data.mean().item(), 3),
        "q_best_minus_dataset": round((q.max(dim=0).values - q_data).mean().item(), 3),
    }


def recorded_states(
    directory: Path, module, chunk_dim: int, limit: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Up to `limit` recorded requests (a random subset when there are more): observations as the
    networks see them (normalised) and the chosen actions in the policy's units [N, chunk_dim]."""
    observations, actions = (torch.from_numpy(array) for array in read_requests(directory))
    if actions.shape[-1] != chunk_dim:
        raise ValueError(
            f"{directory}: recorded actions have {actions.shape[-1]} numbers; the run acts with {chunk_dim}"
        )
    if observations.shape[0] > limit:
        keep = torch.randperm(observations.shape[0], generator=generator)[:limit]
        observations, actions = observations[keep], actions[keep]
    chunks = module.to_policy_units(actions.reshape(actions.shape[0], -1, module.action_dim)).flatten(1)
    return module.normalizer(observations), chunks


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="run or step directory")
    parser.add_argument("--states", type=int, default=2048, help="dataset transitions to score")
    parser.add_argument("--k", type=int, default=16, help="candidates per state")
    parser.add_argument("--dataset-dir", type=Path, help="default: the one the run was trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise-scale", type=float, default=1.0, help="the one-step candidates' noise scale (acting's)"
    )
    parser.add_argument(
        "--states-from",
        type=Path,
        help="an mfql-eval --record-dir directory: score its requests' states (and chosen actions)",
    )
    parser.add_argument(
        "--best-of", default="", help="comma-separated K <= --k: what best-of-K acting picks (e.g. 1,5,32)"
    )
    args = parser.parse_args()
    ks = [int(part) for part in args.best_of.split(",") if part.strip()]
    if any(not 1 <= k <= args.k for k in ks):
        parser.error(f"--best-of values must be between 1 and --k {args.k}; got {args.best_of}")
    checkpoint = load_policy_checkpoint(args.checkpoint)
    config = checkpoint.config
    mean, std = checkpoint.model["normalizer.mean"].numpy(), checkpoint.model["normalizer.std"].numpy()
    agent_config = config.agent_config
    # a chunked run (action horizon H > 1) is scored on whole chunks: H * action_dim numbers each
    horizon = agent_config.action_horizon
    chunk_dim = checkpoint.action_dim * horizon
    module = serving_policy_from_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(args.seed)
    if args.states_from is None:
        train_set, _ = load_task_datasets(config.env_name, args.dataset_dir or Path(config.dataset_dir))
        buffer = ReplayBuffer(train_set, mean, std, 0, args.seed, horizon, agent_config.discount)
        batch = buffer.sample(args.states)
        observations, actions = batch.observations, batch.actions
    else:
        try:
            observations, actions = recorded_states(
                args.states_from, module, chunk_dim, args.states, generator
            )
        except ValueError as exc:
            parser.error(str(exc))
    states = observations.shape[0]
    noise = torch.randn(args.k, states, chunk_dim, generator=generator)

    flat_obs = observations.unsqueeze(0).expand(args.k, -1, -1).reshape(-1, checkpoint.obs_dim)
    candidates = one_step_actions(module.policy, flat_obs, args.noise_scale * noise.reshape(-1, chunk_dim))
    candidates = candidates.clamp(-1, 1).reshape(args.k, states, -1)
    values = candidate_values(module.critic, observations, candidates)
    q = values.mean(dim=0)
    q_data = module.critic(observations, actions).mean(dim=0)
    report = {
        "checkpoint": str(checkpoint.path),
        "agent": config.agent,
        "step": checkpoint.step,
        "action_horizon": horizon,
        "states": states,
        "reference": "dataset" if args.states_from is None else "recorded",
        "k": args.k,
        "noise_scale": args.noise_scale,
        **coverage(candidates, actions, horizon),
        **critic_view(q, q_data),
        # what best-of-5 acting picks: the first 5 candidates are those noise[:5] gives
        "q_best_of_5": round(q[:5].max(dim=0).values.mean().item(), 3),
    }
    if ks:
        report["critic_aggregate"] = module.critic_aggregate
        report["dataset_abs_action"] = abs_per_dimension(actions, checkpoint.action_dim)
        scores = ensemble_score(values, module.critic_aggregate)
        report["best_of"] = chosen_view(candidates, scores, q, actions, q_data, checkpoint.action_dim, ks)
    if config.agent in FLOW_DISTILLED_AGENTS:
        flow = bc_flow_of(checkpoint)
        flow_candidates = euler_flow_actions(
            flow, flat_obs, noise.reshape(-1, chunk_dim), config.agent_config.flow_steps
        ).reshape(args.k, states, -1)
        flow_values = candidate_values(module.critic, observations, flow_candidates)
        flow_q = flow_values.mean(dim=0)
        flow_report = {**coverage(flow_candidates, actions, horizon), **critic_view(flow_q, q_data)}
        if ks:
            flow_scores = ensemble_score(flow_values, module.critic_aggregate)
            flow_report["best_of"] = chosen_view(
                flow_candidates, flow_scores, flow_q, actions, q_data, checkpoint.action_dim, ks
            )
        report.update({f"bc_flow_{key}": value for key, value in flow_report.items()})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
