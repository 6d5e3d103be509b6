"""Keep a checkpoint's critic, change where its best-of-K candidates come from, and roll out.

Separates the two halves of a best-of-K policy: is a run that rarely succeeds held back by its
critic (it ranks badly) or by its candidates (nothing good to rank)? The critic (the run's
target critic, as served) and the observation normaliser stay fixed; each `--source` replaces
only the generator of the K candidates, and every source is rolled out on the same episode
seeds with `evaluate_policy`, exactly as `mfql-eval` does. docs/results/best-of-n.md, round 4,
is this study on puzzle-3x3 task2.

Sources (T a time in (0, 1), C and SIGMA numbers):

- `onestep`: the run's own acting generator (MeanFlow: clip(g(s, e, 1)); FQL: its one-step
  policy);
- `renoise:T`: `--renoise-time T` (the candidate's own noise reversed, as a bundle computes it);
  `renoise-fresh:T`: the same with fresh noise e' per candidate (a second noise a bundle has no
  input for); MeanFlow runs only;
- `twostep`: a two-step DDIM-style MeanFlow sample (`self_distillation_target`);
- `flow`: an FQL run's BC flow, integrated with its own number of Euler steps (QC's best-of-N
  sampler);
- `scale:C`: clip(C a); `noise:SIGMA`: clip(a + SIGMA n); `push:C`: clip(a + C (a - e)), with
  a the one-step candidate and n fresh Gaussian noise;
- `temper:C`: the one-step candidate from noise scaled by C, clip(g(s, C e, 1)) (C < 1: a lower
  sampling temperature, candidates nearer the generator's mode; round 13). Every other source
  draws from unscaled noise, also for a run that acts with `--noise-scale`: name its scale with
  `temper:C` to act as it does.

Each source takes its generator from another run or step directory trained on the same data
with the same action horizon when `:RUN` ends it (`onestep:RUN`, `flow:RUN`, `renoise:0.3:RUN`):
the critic of one checkpoint ranks the candidates of another, which separates a change in
success between two checkpoints into the critic's share and the generator's.

`--critic-aggregate min` ranks the candidates by the ensemble's minimum instead of its mean (a
pessimistic choice: a candidate wins only where every critic rates it high; round 7).
`--record-dir DIR` records each source's requests to `DIR/<source>/` as `mfql-eval --record-dir`
does (training/rollout_recording.py).

    python -m training.studies.candidate_sources runs/best-of-n/task2/bon-seed0 \
        --source onestep --source renoise:0.3 --source flow:runs/qc-alpha/task2/fql-chunk-5-alpha-100-seed0 \
        --episodes 50 --seed 1000

Prints one JSON object per source (one per line, as they finish): the source, the network
evaluations per candidate, and `evaluate_policy`'s result. Fresh-noise sources draw from a
generator seeded with `--seed` (one per source), so a run repeats exactly.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from training.agents.common import acting_candidates, renoised_actions
from training.agents.fql import euler_flow_actions
from training.agents.mfql import self_distillation_target
from training.checkpoint import CheckpointError, PolicyCheckpoint, load_policy_checkpoint
from training.config import FLOW_DISTILLED_AGENTS, Acting, ActingOverrides, check_renoise_range
from training.evaluate import evaluate_policy
from training.inference import ServingPolicy, action_bounds_of, bc_flow_of, serving_policy_from_checkpoint
from training.rollout_recording import check_record_dir

SOURCES = ("onestep", "renoise", "renoise-fresh", "twostep", "flow", "scale", "noise", "push", "temper")


class CandidateSource(nn.Module):
    """A generator in the policy's signature forward(observations, noise, t) -> candidates.

    ServingPolicy calls its policy at t = 1 and clips what comes back, so `make` maps
    (observations, noise) to the candidates and the t it is given is ignored.
    """

    def __init__(
        self, networks: dict[str, nn.Module], make: Callable[[Tensor, Tensor], Tensor], evaluations: int
    ) -> None:
        super().__init__()
        self.networks = nn.ModuleDict(networks)
        self.make = make
        self.evaluations = evaluations  # network evaluations per candidate

    def forward(self, observations: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.make(observations, noise)


def compatible(base: PolicyCheckpoint, other: PolicyCheckpoint) -> None:
    """A source from another run must see the same normalised observations and chunk shape."""
    shape = lambda c: (c.obs_dim, c.action_dim, c.config.agent_config.action_horizon)  # noqa: E731
    if shape(base) != shape(other):
        raise ValueError(
            f"{other.path} has (obs_dim, action_dim, action_horizon) {shape(other)}; the critic's run "
            f"{base.path} has {shape(base)}: a source must be trained on the same data with the same horizon"
        )
    if not (torch.equal(base.obs_mean, other.obs_mean) and torch.equal(base.obs_std, other.obs_std)):
        raise ValueError(
            f"{other.path} normalises observations differently from {base.path}: train both on the same dataset"
        )


def build_source(spec: str, base: PolicyCheckpoint, seed: int) -> CandidateSource:
    """One `--source` spec -> its candidate generator (see the module docstring for the specs).

    Fresh noise comes from the source's own generator seeded with `seed`, so a source's result
    does not depend on which others run beside it.
    """
    kind, _, argument = spec.partition(":")
    if kind not in SOURCES:
        raise ValueError(
            f"unknown source {spec!r}; expected one of {', '.join(SOURCES)} (with :ARG where needed)"
        )
    run = argument
    if kind in ("renoise", "renoise-fresh", "scale", "noise", "push", "temper"):
        number, _, run = argument.partition(":")
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"source {spec!r}: {kind} takes a number, e.g. {kind}:0.3") from None
    checkpoint = load_policy_checkpoint(Path(run)) if run else base
    if checkpoint is not base:
        compatible(base, checkpoint)
    acting = serving_policy_from_checkpoint(checkpoint, ActingOverrides(renoise_time=0)).policy
    generator = torch.Generator().manual_seed(seed)

    def fresh(like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=generator)

    def one_step(observations: Tensor, noise: Tensor) -> Tensor:
        return acting_candidates(acting, observations, noise)

    if kind == "flow":
        try:
            velocity = bc_flow_of(checkpoint)
        except ValueError as exc:
            raise ValueError(f"source {spec!r}: {exc}") from None
        steps = checkpoint.config.agent_config.flow_steps
        return CandidateSource(
            {"velocity": velocity}, lambda s, e: euler_flow_actions(velocity, s, e, steps), steps
        )
    if kind in ("renoise", "renoise-fresh", "twostep") and checkpoint.config.agent in FLOW_DISTILLED_AGENTS:
        raise ValueError(
            f"source {spec!r} needs a MeanFlow network g(s, z, t); {checkpoint.path} is an "
            f"{checkpoint.config.agent} run"
        )
    if kind in ("renoise", "renoise-fresh"):
        check_renoise_range(value)
    makers: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], int]] = {
        "onestep": (one_step, 1),
        "renoise": (lambda s, e: acting_candidates(acting, s, e, value), 2),
        "renoise-fresh": (lambda s, e: renoised_actions(acting, s, e, value, fresh(e)), 2),
        "twostep": (lambda s, e: self_distillation_target(acting, s, e, one_step(s, e), 2), 2),
        "scale": (lambda s, e: value * one_step(s, e), 1),
        "noise": (lambda s, e: one_step(s, e) + value * fresh(e), 1),
        "push": (lambda s, e: (a := one_step(s, e)) + value * (a - e), 1),
        "temper": (lambda s, e: one_step(s, value * e), 1),
    }
    make, evaluations = makers[kind]
    return CandidateSource({"policy": acting}, make, evaluations)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="the run (or step directory) whose critic ranks")
    parser.add_argument(
        "--source",
        action="append",
        required=True,
        help=f"a candidate source (repeat for several): {', '.join(SOURCES)}; "
        "a final :RUN takes its generator from another run",
    )
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument(
        "--seed", type=int, default=1_000_000, help="first episode seed (mfql-eval's default)"
    )
    parser.add_argument("--num-candidates", type=int, help="K (default: the K the run acts with)")
    parser.add_argument("--env", help="env to roll out in (default: the one the run evaluated in)")
    parser.add_argument(
        "--critic-aggregate",
        choices=("mean", "min"),
        help="how the critic ensemble ranks the K candidates: its mean (QC's q_agg=mean) or its "
        "minimum (pessimistic); default: as the run acts (AgentConfig.critic_aggregate)",
    )
    parser.add_argument(
        "--record-dir", type=Path, help="record each source's requests to DIR/<source>/ (as mfql-eval does)"
    )
    return parser


def record_dir(directory: Path | None, spec: str) -> Path | None:
    """Where a source's requests are recorded: DIR/<the source's spec, made a safe file name>."""
    return None if directory is None else directory / re.sub(r"[^A-Za-z0-9._-]", "_", spec)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        base = load_policy_checkpoint(args.checkpoint)
        served = serving_policy_from_checkpoint(
            base, ActingOverrides(renoise_time=0, critic_aggregate=args.critic_aggregate)
        )
        sources = {spec: build_source(spec, base, args.seed) for spec in args.source}
        records = {spec: record_dir(args.record_dir, spec) for spec in sources}
        for directory in records.values():
            if directory is not None:
                check_record_dir(directory)  # before any source rolls out
    except (CheckpointError, ValueError) as exc:
        print(f"candidate_sources: {exc}", file=sys.stderr)
        return 2
    env = args.env or base.config.evaluation_env
    if env is None:
        print(f"candidate_sources: {base.path} names no env to roll out in; pass --env", file=sys.stderr)
        return 2
    k = args.num_candidates or base.config.acting_num_candidates
    torch.set_num_threads(1)  # one observation per request: one thread is fastest (as mfql-eval)
    torch.set_flush_denormal(True)
    for spec, source in sources.items():
        module = ServingPolicy(
            served.normalizer, source, served.critic, base.action_dim, served.action_horizon,
            action_bounds_of(base.dataset), Acting(critic_aggregate=served.critic_aggregate),
        ).eval()  # fmt: skip
        result = evaluate_policy(
            module, env, args.episodes, k, args.seed, progress=False,
            replan_every=base.config.replan_every, observation_keys=base.config.data.observation_keys,
            record_dir=records[spec],
        )  # fmt: skip
        result.pop("policy_latency_ms")
        row = {
            "critic": str(base.path),
            "step": base.step,
            "source": spec,
            "evaluations_per_candidate": source.evaluations,
            "critic_aggregate": served.critic_aggregate,
        }
        print(json.dumps({**row, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
