"""Where a run's critic knows the way: its Q on the data, by how far the data is from success.

A best-of-K policy moves only where its critic ranks candidate chunks by their real worth. This
study reads the critic (the run's target critic, as served) on the run's own training data and
groups the chunk starts of episodes that reach success by the steps d still to go in the data:

- `data_return`: the data's discounted return from there to its success, sum_k gamma^k r_{t+k}
  over rows t .. t + d (under sparse rewards -(1 - gamma^d) / (1 - gamma)); an optimal policy
  does at least as well, never worse;
- `q_data`: the critic's value of the data's own chunk at that state (its ensemble mean, or
  minimum where the run ranks by it);
- `q_best`: the served value of the best of K candidates (what the policy would act on);
- `q_spread`: the standard deviation of the critic's scores over the K candidates (how much the
  choice matters to it), `q_best_minus_median`;

and one more group for episodes that never succeed after the state. A critic that is right
near success and flat far from it cannot rank chunks where the task is long
(docs/results/best-of-n.md, round 11: puzzle-3x3 task4).

On OGBench puzzle envs (Lights Out: training/data/lights_out.py) the states are also grouped by
the fewest presses still needed from the lights in the observation to the task's goal, which
is the state's true distance in presses whatever the data did.

    python -m training.studies.critic_values runs/best-of-n/task4/bon-seed0 [--states 2000 --k 32]

Prints JSON: {"by_steps_to_success": [...], "by_presses_left": [...] (puzzle envs), ...}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from training.agents.common import ensemble_score
from training.checkpoint import CheckpointError, load_policy_checkpoint
from training.data.dataset import OfflineDataset, episode_slices
from training.data.lights_out import fewest_presses, puzzle_grid
from training.data.sources import load_training_data
from training.data.task_names import parse_task_name
from training.inference import ServingPolicy, serving_policy_from_checkpoint
from training.replay_buffer import chunk_starts

# Upper edges of the steps-to-success groups: [0, 5), [5, 10), ..., [320, inf).
DISTANCE_EDGES = (5, 10, 20, 40, 80, 160, 320)
# OGBench's puzzle observation (PuzzleEnv.compute_observation): 19 proprioceptive numbers, then
# per button its state one-hot (2), position and velocity; a light is on where the one-hot's
# second entry is 1.
PUZZLE_PROPRIO_DIM = 19
PUZZLE_BUTTON_DIM = 4


def steps_to_success(dataset: OfflineDataset) -> np.ndarray:
    """Per row, the rows until the first success at or after it in its episode ([N] int; -1: none).

    0 on a row whose transition reaches success (OGBench: mask 0), d on the row d before it.
    """
    success = dataset.success_flags > 0
    steps = np.full(dataset.size, -1, dtype=np.int64)
    for episode in episode_slices(dataset):
        next_success = -1
        for row in range(episode.stop - 1, episode.start - 1, -1):
            if success[row]:
                next_success = row
            steps[row] = next_success - row if next_success >= 0 else -1
    return steps


def returns_to_success(dataset: OfflineDataset, steps: np.ndarray, discount: float) -> np.ndarray:
    """Per row with steps[t] = d >= 0: sum_{k=0..d} discount^k r_{t+k}; NaN where no success follows."""
    rewards = np.asarray(dataset.rewards, dtype=np.float64)
    result = np.full(dataset.size, np.nan)
    for row in np.flatnonzero(steps >= 0)[::-1]:
        # the success row ends the sum; each earlier row adds its reward to the discounted rest
        following = 0.0 if steps[row] == 0 else result[row + 1]
        result[row] = rewards[row] + discount * following
    return result


def puzzle_lights(observations: np.ndarray, buttons: int) -> np.ndarray:
    """[N, obs_dim] OGBench puzzle observations -> [N, buttons] lights (0/1)."""
    expected = PUZZLE_PROPRIO_DIM + PUZZLE_BUTTON_DIM * buttons
    if observations.shape[1] != expected:
        raise ValueError(
            f"a puzzle observation with {buttons} buttons has {expected} numbers; got {observations.shape[1]}"
        )
    columns = [PUZZLE_PROPRIO_DIM + PUZZLE_BUTTON_DIM * i + 1 for i in range(buttons)]
    return np.rint(observations[:, columns]).astype(np.int64)


def puzzle_goal(env_name: str) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(goal lights, grid) of an OGBench puzzle singletask name; None for other envs."""
    try:
        task = parse_task_name(env_name)
    except ValueError:
        return None
    grid = puzzle_grid(task.collection_env)
    if grid is None:
        return None
    import gymnasium
    import ogbench.manipspace  # noqa: F401  (registers the env ids)

    task_id = re.search(r"-task(\d+)-", task.task_env)
    if task_id is None:
        return None
    env = gymnasium.make(task.task_env)
    try:
        info = env.unwrapped.task_infos[int(task_id.group(1)) - 1]
    finally:
        env.close()
    return np.asarray(info["goal_button_states"], dtype=np.int64), grid


@torch.no_grad()
def critic_view(
    served: ServingPolicy, dataset: OfflineDataset, rows: np.ndarray, k: int, generator: torch.Generator
) -> dict[str, np.ndarray]:
    """Per chunk start in `rows`: q_data, q_best, q_spread, q_best_minus_median (each [len(rows)])."""
    horizon = served.action_horizon
    observations = torch.as_tensor(dataset.observations[rows])
    # the run's data holds actions as the networks see them (scaled where the run scaled them)
    chunks = np.stack([dataset.actions[rows + j] for j in range(horizon)], axis=1).reshape(len(rows), -1)
    normalized = served.normalizer(observations)
    aggregate = served.critic_aggregate
    q_data = ensemble_score(served.critic(normalized, torch.as_tensor(chunks)), aggregate)
    noise = torch.randn((len(rows), k, *served.noise_shape), generator=generator)
    _, q_best, candidates = served(observations, noise)
    flat = served.to_policy_units(candidates).reshape(len(rows), k, -1).transpose(0, 1)  # [K, B, Hd]
    scores = ensemble_score(served.critic(normalized, flat), aggregate)  # [K, B]
    return {
        "q_data": q_data.numpy(),
        "q_best": q_best.numpy(),
        "q_spread": scores.std(dim=0).numpy(),
        "q_best_minus_median": (scores.max(dim=0).values - scores.median(dim=0).values).numpy(),
    }


def summarise(view: dict[str, np.ndarray], mask: np.ndarray, **fields) -> dict:
    row = {**fields, "states": int(mask.sum())}
    for name, values in view.items():
        row[name] = round(float(values[mask].mean()), 3)
    row["q_data_std"] = round(float(view["q_data"][mask].std()), 3)
    return row


def sample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, size=min(limit, len(rows)), replace=False))


def critic_values(
    served: ServingPolicy, dataset: OfflineDataset, discount: float, states: int, k: int, seed: int,
    goal: tuple[np.ndarray, tuple[int, int]] | None = None,
) -> dict:  # fmt: skip
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    starts = chunk_starts(torch.as_tensor(dataset.terminals), served.action_horizon).numpy()
    steps = steps_to_success(dataset)
    returns = returns_to_success(dataset, steps, discount)
    edges = (0, *DISTANCE_EDGES, None)
    report: dict = {"by_steps_to_success": []}
    d = steps[starts]
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (d >= low) & (d < high if high is not None else True)
        if not inside.any():
            continue
        rows = sample(starts[inside], states, rng)
        view = critic_view(served, dataset, rows, k, generator)
        report["by_steps_to_success"].append(
            summarise(
                view,
                np.ones(len(rows), bool),
                steps=f"{low}-{high - 1}" if high else f"{low}+",
                data_return=round(float(returns[rows].mean()), 3),
            )  # fmt: skip
        )
    never = starts[d < 0]
    if len(never):
        rows = sample(never, states, rng)
        view = critic_view(served, dataset, rows, k, generator)
        report["by_steps_to_success"].append(summarise(view, np.ones(len(rows), bool), steps="never"))
    if goal is not None:
        lights_goal, grid = goal
        rows = sample(starts, states * 4, rng)
        lights = puzzle_lights(dataset.observations[rows], grid[0] * grid[1])
        presses = np.array([fewest_presses(lit, lights_goal, *grid) for lit in lights])
        view = critic_view(served, dataset, rows, k, generator)
        report["by_presses_left"] = [
            summarise(view, presses == p, presses_left=int(p)) for p in np.unique(presses)
        ]
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a run or one of its step directories")
    parser.add_argument("--states", type=int, default=2000, help="chunk starts per group (at most)")
    parser.add_argument("--k", type=int, help="candidates per state (default: as the run acts)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.states < 1 or (args.k is not None and args.k < 1):
        print("critic_values: --states and --k must be at least 1", file=sys.stderr)
        return 2
    try:
        checkpoint = load_policy_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"critic_values: {exc}", file=sys.stderr)
        return 2
    config = checkpoint.config
    torch.set_num_threads(1)
    served = serving_policy_from_checkpoint(checkpoint)
    dataset = load_training_data(config.env_name, config.dataset_dir, config.data).train
    k = args.k or config.acting_num_candidates
    report = {
        "checkpoint": str(checkpoint.path),
        "step": checkpoint.step,
        "agent": config.agent,
        "env": config.env_name,
        "k": k,
        "critic_aggregate": served.critic_aggregate,
        "discount": config.agent_config.discount,
    }
    goal = puzzle_goal(config.env_name) if config.data.source is None else None
    report.update(
        critic_values(served, dataset, config.agent_config.discount, args.states, k, args.seed, goal)
    )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
