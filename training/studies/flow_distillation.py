"""Distil an FQL run's BC flow into a one-step generator with no Q term, and save it as a checkpoint.

The question it answers (docs/results/best-of-n.md, round 15): QC's best of 32 samples of a
10-step BC flow, ranked by a chunked critic, solves puzzle-3x3 task4; the same critic ranking
32 one-step candidates (a Q-pushed distilled policy, or `bon`'s MeanFlow generator) stops
pressing. Is one network evaluation per candidate the limit, or the way those one-step
generators were trained? This study keeps the run's BC flow and critic, and trains a one-step
network mu(s, e) by regression alone onto the flow's 10-step Euler sample for the same noise,

    loss = mean || mu(s, e) - clip(Flow_10(s, e)) ||^2,   e ~ N(0, I),  s from the run's data,

the distillation term of FQL's actor loss without its Q term (FQL's `alpha` -> infinity). The
target is a deterministic function of (s, e), so this is plain regression with no sampling
noise in the target. The student starts from the run's own one-step policy (`--from-scratch`:
a fresh network of the same size) and is written as a step directory of the same run, its
`policy.*` tensors replaced and every other tensor (critic, flow, normaliser) kept, so
`mfql-eval`, `candidate_sources` and `generator_quality` take it as they take the run:

    python -m training.studies.flow_distillation runs/qc512/task4/fql-chunk-5-alpha-100-seed0 \
        --steps 20000 --out runs/distill/task4-qc512
    mfql-eval runs/distill/task4-qc512 --num-candidates 32 --episodes 50 --seed 1000

Prints the distillation error on a fixed probe (1024 states and noises drawn once; training
draws fresh noise) as it trains (every `--log-every` steps) and writes it, with the settings, to
the step directory's `config.json` under `metrics.flow_distillation`. OGBench data only (it
reads the dataset named in the run's config, as `generator_quality` does).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from training.agents.fql import euler_flow_actions
from training.checkpoint import CONFIG_FILE, MODEL_FILE, PolicyCheckpoint, load_policy_checkpoint
from training.data.ogbench_files import load_task_datasets
from training.inference import bc_flow_of
from training.networks import OneStepMLPPolicy
from training.replay_buffer import ReplayBuffer


@dataclass(frozen=True)
class DistillationSettings:
    """How the student is trained (defaults: FQL's optimiser, lr 3e-4, batch 256)."""

    steps: int = 20_000
    batch_size: int = 256
    learning_rate: float = 3e-4
    from_scratch: bool = False  # start from a fresh network instead of the run's one-step policy
    seed: int = 0
    log_every: int = 1000
    probe_states: int = 1024  # states the reported error is measured on (fixed noise)


def student_of(checkpoint: PolicyCheckpoint, from_scratch: bool, seed: int) -> OneStepMLPPolicy:
    """A one-step network of the run's size: its own one-step policy, or freshly initialised."""
    chunk_dim = checkpoint.action_dim * checkpoint.config.agent_config.action_horizon
    torch.manual_seed(seed)
    student = OneStepMLPPolicy(checkpoint.obs_dim, chunk_dim, checkpoint.config.network)
    if not from_scratch:
        student.load_state_dict(checkpoint.module_state("policy"))
    return student


def distillation_error(student: nn.Module, observations: Tensor, noise: Tensor, targets: Tensor) -> float:
    """Mean squared distance per action dimension of the student's clipped output to the flow's sample."""
    with torch.no_grad():
        return (student(observations, noise).clamp(-1, 1) - targets).pow(2).mean().item()


def distil(
    flow: nn.Module,
    student: nn.Module,
    buffer: ReplayBuffer,
    settings: DistillationSettings,
    flow_steps: int,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train `student` onto the flow's `flow_steps`-step samples; returns the logged errors."""
    generator = torch.Generator().manual_seed(settings.seed)
    probe = buffer.sample(settings.probe_states).observations
    chunk_dim = buffer.sample(1).actions.shape[-1]
    probe_noise = torch.randn(probe.shape[0], chunk_dim, generator=generator)
    probe_targets = euler_flow_actions(flow, probe, probe_noise, flow_steps)
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.learning_rate)
    log = [{"step": 0, "probe_sq_error": distillation_error(student, probe, probe_noise, probe_targets)}]
    bar = tqdm(range(1, settings.steps + 1), desc="distil", disable=not progress)
    for step in bar:
        observations = buffer.sample(settings.batch_size).observations
        noise = torch.randn(observations.shape[0], chunk_dim, generator=generator)
        target = euler_flow_actions(flow, observations, noise, flow_steps)
        loss = (student(observations, noise) - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % settings.log_every == 0 or step == settings.steps:
            error = distillation_error(student, probe, probe_noise, probe_targets)
            log.append({"step": step, "train_loss": loss.item(), "probe_sq_error": error})
            bar.set_postfix(probe=f"{error:.4f}")
    return log


def write_distilled(checkpoint: PolicyCheckpoint, student: nn.Module, out: Path, report: dict) -> Path:
    """`out` as a step directory of the run with the student as its policy; refuses to overwrite."""
    if out.exists():
        raise FileExistsError(f"{out} exists; name a new directory for the distilled checkpoint")
    out.mkdir(parents=True)
    # a run trained with an EMA of its policy acts with `acting_policy.*`: the student replaces both
    prefixes = [p for p in ("policy.", "acting_policy.") if any(k.startswith(p) for k in checkpoint.model)]
    model = {k: v for k, v in checkpoint.model.items() if not k.startswith(tuple(prefixes))}
    weights = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    for prefix in prefixes:
        model.update({prefix + k: v.clone() for k, v in weights.items()})
    save_file(model, str(out / MODEL_FILE))
    description = json.loads((checkpoint.path / CONFIG_FILE).read_text())
    description.setdefault("metrics", {})["flow_distillation"] = report
    (out / CONFIG_FILE).write_text(json.dumps(description, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    defaults = DistillationSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="an FQL run (or step directory) with a BC flow")
    parser.add_argument("--out", type=Path, required=True, help="the new step directory to write")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--from-scratch", action="store_true", help="a fresh student, not the run's policy")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--dataset-dir", type=Path, help="default: the one the run was trained on")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.log_every < 1:
        parser.error("--steps, --batch-size and --log-every must be >= 1")
    if args.out.exists():
        parser.error(f"--out {args.out} exists; name a new directory")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = DistillationSettings(
        args.steps, args.batch_size, args.lr, args.from_scratch, args.seed, args.log_every
    )
    checkpoint = load_policy_checkpoint(args.checkpoint)
    try:
        flow = bc_flow_of(checkpoint)
    except ValueError as exc:
        parser.error(str(exc))
    config = checkpoint.config
    agent_config = config.agent_config
    train_set, _ = load_task_datasets(config.env_name, args.dataset_dir or Path(config.dataset_dir))
    mean, std = checkpoint.obs_mean.numpy(), checkpoint.obs_std.numpy()
    buffer = ReplayBuffer(
        train_set, mean, std, 0, settings.seed, agent_config.action_horizon, agent_config.discount
    )
    student = student_of(checkpoint, settings.from_scratch, settings.seed)
    log = distil(flow, student, buffer, settings, agent_config.flow_steps)
    report = {
        "source": str(checkpoint.path),
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "from_scratch": settings.from_scratch,
        "seed": settings.seed,
        "flow_steps": agent_config.flow_steps,
        "log": log,
    }
    try:
        write_distilled(checkpoint, student, args.out, report)
    except FileExistsError as exc:
        parser.error(str(exc))
    print(
        json.dumps({k: v for k, v in report.items() if k != "log"} | {"final": log[-1], "out": str(args.out)})
    )


if __name__ == "__main__":
    main()
