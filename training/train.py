"""`mfql-train`: offline (then optionally online) MFQL training on an OGBench singletask dataset."""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from tqdm import tqdm

from training.agents import build_agent
from training.checkpoint import CheckpointError, list_checkpoints, load_policy_checkpoint
from training.config import (
    FLOW_DISTILLED_AGENTS,
    FLOW_TIME_SAMPLINGS,
    GELU_KINDS,
    ActingVariant,
    AgentName,
    NetworkConfig,
    TrainConfig,
    resolve_agent_config,
)
from training.data.rewards import REWARD_KINDS, RewardConfig
from training.data.sources import (
    ACTION_SCALINGS,
    OBSERVATION_NORMALIZATIONS,
    DataConfig,
    LoadedData,
    dataset_name,
    is_ogbench_name,
    load_training_data,
)
from training.evaluate import evaluate_policy
from training.inference import ServingPolicy, action_bounds_of
from training.multi_seed import StackedSeeds
from training.networks import ObservationNormalizer
from training.precision import resolve_device, resolve_precision
from training.replay_buffer import ReplayBuffer
from training.run_log import RunLog
from training.training_state import restore_training_state, save_training_state


class RunDirectoryError(RuntimeError):
    """The run directory exists and neither --resume nor --overwrite was given."""


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 256,256; got {text!r}"
        ) from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"layer widths must be positive integers; got {text!r}")
    return widths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfql-train", description="Train a MeanFlow Q-learning policy.")
    p.add_argument("--env", default=TrainConfig.env_name, help="OGBench singletask name")
    p.add_argument(
        "--dataset-dir", default=TrainConfig.dataset_dir, help="folder with <dataset>.npz and -val.npz"
    )
    add_data_arguments(p)
    p.add_argument("--out", default=TrainConfig.out_dir, help="run directory")
    p.add_argument("--steps", type=int, default=TrainConfig.offline_steps, help="offline gradient steps")
    p.add_argument("--online-steps", type=int, default=0, help="offline-to-online steps after --steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        help="train several seeds as one vectorised computation, e.g. 0,1,2,3 (replaces --seed): "
        "one run directory per seed, --out/seed<N>, each as a single-seed run of that seed would be",
    )
    p.add_argument(
        "--agent",
        choices=list(get_args(AgentName)),
        default="mfql",
        help="method (fql: the two-stage baseline; bon: one-step best-of-N, the MeanFlow policy trained "
        "by the MFI loss alone and Q only in choosing among its K candidates; bon-distill: the same with "
        "a one-step network distilled from a BC flow with no Q term; K = 32, H = 5 unless given)",
    )
    p.add_argument("--policy", choices=["dit", "mlp"], default="dit", help="MFQL policy network")
    p.add_argument(
        "--mlp-hidden", type=_widths, help="MLP policy hidden widths, e.g. 256,256,256,256 (default 4x512)"
    )
    p.add_argument("--critic-hidden", type=_widths, help="each critic's hidden widths (default 4x512)")
    p.add_argument(
        "--gelu",
        choices=GELU_KINDS,
        default=NetworkConfig.gelu,
        help="GELU of the MLP policy and critics: exact erf (default) or the tanh approximation (the reference's)",
    )
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--eval-every", type=int, default=TrainConfig.eval_every, help="0: only at the end")
    p.add_argument(
        "--eval-episodes", type=int, default=TrainConfig.eval_episodes, help="0 turns evaluation off"
    )
    p.add_argument(
        "--eval-env",
        help="env to evaluate in (a gymnasium id, minari:<id> or an OGBench singletask name); default: the env "
        "the data names (OGBench, or a Minari dataset's stored env), else none (offline-only training)",
    )
    p.add_argument(
        "--eval-num-candidates",
        type=int,
        help="K the policy acts with at evaluation, in mfql-eval and as the exported default (default: --num-candidates)",
    )
    p.add_argument("--log-every", type=int, default=TrainConfig.log_every)
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    p.add_argument("--keep-checkpoints", type=int, default=TrainConfig.keep_checkpoints)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="auto",
        help="matmul number format; auto = bf16 where the CPU (AMX/AVX512-BF16) or GPU has it natively",
    )
    p.add_argument(
        "--device",
        help="where the networks and the update run: cpu (default), cuda, cuda:N or auto (cuda where torch "
        "sees a GPU); evaluation and checkpoints use CPU copies, so --resume may name another device "
        "(default there: the run's own)",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="on",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the whole update (losses, backward, clipped Adam, EMA, alpha) into one program: "
        f"one to two minutes at start, cached in ~/.cache/mfql/torchinductor (or TORCHINDUCTOR_CACHE_DIR). "
        f"auto (default): on for runs of {COMPILE_MIN_STEPS} steps or more with MLP networks no wider than "
        f"{COMPILE_MAX_WIDTH} (where it pays on a CPU) where a C++ compiler is found, else off; "
        "a bare --compile is on",
    )
    p.add_argument(
        "--hyperparameters",
        choices=["paper", "reference"],
        default="paper",
        help="critic lr / discount from the paper's text (1e-4, 0.995) or its code (3e-4, per family)",
    )
    p.add_argument("--alpha", type=float, help="initial BC coefficient (default: per task family)")
    p.add_argument("--alpha-schedule", choices=["adaptive", "cosine"])
    p.add_argument("--num-candidates", type=int, help="K (default: per task family)")
    p.add_argument("--discount", type=float)
    p.add_argument(
        "--action-horizon",
        type=int,
        help="H: the policy generates chunks of H actions and the critic learns H-step backups "
        "(Q-chunking; default 1, the paper's one action per step)",
    )
    p.add_argument(
        "--eval-replan-every",
        type=int,
        help="chunked policies: actions executed from each chunk before the next is asked for (default H)",
    )
    p.add_argument(
        "--renoise-time",
        type=float,
        help="MeanFlow agents (mfql, bon), acting only: re-noise each one-step candidate to this time "
        "in (0, 1) and let the critic rank the network's output there (two network evaluations per "
        "candidate; a study option beyond the paper, docs/method.md). Default: off (one step)",
    )
    p.add_argument(
        "--renoise-target",
        action="store_true",
        default=None,
        help="with --renoise-time: the critic's best-of-K target ranks re-noised candidates too, so "
        "the critic values the policy that acts (a study option beyond the paper). Default: one-step",
    )
    p.add_argument(
        "--critic-aggregate",
        choices=["mean", "min"],
        help="acting only (evaluation, export, serving): rank the K candidates by the critic "
        "ensemble's mean Q (the paper) or its minimum, a pessimistic choice (a study option; "
        "docs/method.md). The critic's target keeps the mean. Default: mean",
    )
    p.add_argument(
        "--noise-scale",
        type=float,
        help="acting only (evaluation, export, serving): scale each candidate's noise by this factor "
        ">= 0 before the policy, clip(g(s, C e, 1)): below 1 a lower sampling temperature, candidates "
        "nearer the generator's mode (a study option; docs/method.md). The critic's target keeps "
        "unscaled noise unless --noise-scale-target; a resumed run may set it anew. Default: 1",
    )
    p.add_argument(
        "--noise-scale-target",
        action="store_true",
        default=None,
        help="with --noise-scale: the critic's best-of-K target draws its candidates from the same "
        "scaled noise, so the critic values the policy that acts (a study option; the run's maths, "
        "kept on resume). Default: unscaled",
    )
    p.add_argument(
        "--target-aggregate",
        choices=["mean", "min"],
        help="the critic's TD target: reduce the target critic's ensemble by its mean (the paper, "
        "Q-chunking's q_agg=mean) or its minimum, pessimistic (FQL's and Q-chunking's q_agg=min; "
        "with --agent bon the online critic's pick among the K next chunks too). A study option; "
        "set --critic-aggregate min as well for all of q_agg=min. Default: mean",
    )
    p.add_argument(
        "--also-eval-renoise-time",
        type=float,
        help="MeanFlow agents (mfql, bon): every evaluation also acts re-noised at this time in (0, 1), "
        "or 0 for one step, on the same episodes and seeds (evaluations_also.csv; mfql-sweep tables "
        "it as a row of its own); a resumed run may set it anew. Default: off",
    )
    p.add_argument(
        "--also-eval",
        action="append",
        metavar="SPEC",
        help="every evaluation also acts this way, on the same episodes and seeds (repeatable; "
        "after --also-eval-renoise-time's): " + ActingVariant.SPEC_HELP + "; unset keys act as "
        "the run does (evaluations_also.csv, a row of its own in mfql-sweep); a resumed run may "
        "set them anew. Default: none",
    )
    p.add_argument("--time-steps", type=int, help="N of the t grid; > 1000 = continuous")
    p.add_argument("--actor-lr", type=float)
    p.add_argument("--critic-lr", type=float)
    p.add_argument("--normalize-q-loss", action="store_true", default=None)
    p.add_argument(
        "--actor-lr-schedule",
        choices=["warmup-cosine", "constant"],
        help="actor lr: the reference's warm-up + cosine (default) or constant --actor-lr",
    )
    p.add_argument(
        "--schedule-steps",
        type=int,
        help="steps the actor-lr and alpha schedules span (default --steps); e.g. 1000000 = as if 1M, stopped early",
    )
    p.add_argument(
        "--mfi-draws", type=int, help="(e, t) draws per state in the MFI loss (default 1, the paper's)"
    )
    p.add_argument(
        "--flow-time-sampling",
        choices=FLOW_TIME_SAMPLINGS,
        help="t of the MFI loss: uniform (default, the paper's) or linear (density 2t: fewer near the data end)",
    )
    p.add_argument(
        "--policy-ema-rate",
        type=float,
        help="act with an EMA of the policy's weights at this rate, e.g. 0.001 (default 0: off, the paper's)",
    )
    p.add_argument(
        "--anchor-weight",
        type=float,
        help="MFQL study option: weight of the self-distillation anchor, the one-step action "
        "regressed on a multi-step sample of the same network for the same noise (default 0: off, the paper's)",
    )
    p.add_argument("--anchor-steps", type=int, help="steps of the anchor's multi-step sample (default 2)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument(
        "--stop-after", type=int, help="stop (with a checkpoint) after this step, as an interruption would"
    )
    p.add_argument(
        "--time-budget-minutes",
        type=float,
        help="stop after this many minutes of training (evaluations excluded), with a final "
        "evaluation and checkpoint; schedules still span --steps",
    )
    return p


def _keys(text: str) -> tuple[str, ...]:
    keys = tuple(part.strip() for part in text.split(",") if part.strip())
    if not keys:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated keys such as observation.state; got {text!r}"
        )
    return keys


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--dataset and the options of reading it (shared by mfql-train and mfql-data)."""
    p.add_argument(
        "--dataset",
        help="data source instead of --env's OGBench files: an OGBench singletask name, minari:<dataset id>, "
        "a LeRobot dataset folder (v2.1/v3.0) or a transitions .npz/.h5 file (docs/datasets.md)",
    )
    p.add_argument(
        "--observation-keys",
        type=_keys,
        help="observation features to concatenate, e.g. observation.state,observation.environment_state "
        "(LeRobot: default observation.state + the other float vectors; Minari Dict spaces: all vector keys)",
    )
    p.add_argument(
        "--reward",
        choices=REWARD_KINDS,
        default=RewardConfig.kind,
        help="dataset: the source's rewards; sparse: 0 on transitions that reach success, -1 elsewhere (Q-chunking's)",
    )
    p.add_argument("--reward-scale", type=float, default=RewardConfig.scale, help="r <- scale * r + shift")
    p.add_argument(
        "--reward-shift", type=float, default=RewardConfig.shift, help="e.g. -1 for D4RL antmaze's r - 1"
    )
    p.add_argument(
        "--action-scaling",
        choices=ACTION_SCALINGS,
        default=DataConfig.action_scaling,
        help="actions to the policy's [-1, 1]: minmax maps each dimension's data range (the bundle maps back to "
        "the data's units); none refuses data outside [-1, 1]; auto (default): minmax only where needed",
    )
    p.add_argument(
        "--observation-normalization",
        choices=OBSERVATION_NORMALIZATIONS,
        default=DataConfig.observation_normalization,
        help="mean-std (default): the networks see (s - mean) / std of the training data; none: s as it "
        "is (as Q-chunking's code trains; a study option, docs/method.md)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=DataConfig.val_fraction,
        help="share of episodes held out for validation losses where the source has no validation split (0: none)",
    )


def data_config_from_args(args: argparse.Namespace) -> tuple[str | None, DataConfig]:
    """(the env name a --dataset implies, or None; the DataConfig)."""
    reward = RewardConfig(kind=args.reward, scale=args.reward_scale, shift=args.reward_shift)
    source = args.dataset
    if source is None or is_ogbench_name(source):
        if args.observation_keys:
            raise ValueError("--observation-keys applies to Minari and LeRobot sources, not to OGBench files")
        data = DataConfig(
            val_fraction=args.val_fraction,
            reward=reward,
            action_scaling=args.action_scaling,
            observation_normalization=args.observation_normalization,
        )
        return source, data
    data = DataConfig(
        source=source,
        observation_keys=args.observation_keys,
        val_fraction=args.val_fraction,
        reward=reward,
        action_scaling=args.action_scaling,
        observation_normalization=args.observation_normalization,
    )
    return dataset_name(source), data


# Flags that only MFQL's maths reads: refused with --agent fql rather than silently ignored.
MFQL_ONLY_FLAGS = (
    "mfi_draws",
    "flow_time_sampling",
    "anchor_weight",
    "anchor_steps",
    "renoise_time",
    "renoise_target",
    "also_eval_renoise_time",
)
# Flags of MFQL's Q term and alpha, which best-of-N (--agent bon) does not have: refused with it.
BON_UNREAD_FLAGS = ("alpha", "alpha_schedule", "normalize_q_loss", "anchor_weight", "anchor_steps")
UNREAD_FLAGS = {
    "fql": (MFQL_ONLY_FLAGS, "MFQL options; FQL (--agent fql) has no MeanFlow loss to apply them to"),
    "bon-distill": (
        MFQL_ONLY_FLAGS + ("alpha", "alpha_schedule", "normalize_q_loss"),
        "options of MeanFlow losses or of a Q term in the actor; --agent bon-distill distils a BC flow "
        "into its one-step network with no Q term",
    ),
    "bon": (
        BON_UNREAD_FLAGS,
        "options of MFQL's Q term and alpha; best-of-N (--agent bon) trains its policy by the MFI loss alone",
    ),
}


def also_eval_specs(specs) -> tuple[str, ...]:
    """`--also-eval` texts as TrainConfig.also_eval stores them (canonical; a bad one refused)."""
    return tuple(ActingVariant.parse(spec).spec for spec in specs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    unread, reason = UNREAD_FLAGS.get(args.agent, ((), ""))
    given = ["--" + name.replace("_", "-") for name in unread if getattr(args, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: {reason}")
    named_env, data = data_config_from_args(args)
    env_name = named_env or args.env
    agent = resolve_agent_config(
        env_name,
        args.hyperparameters,
        args.agent,
        alpha=args.alpha,
        alpha_schedule=args.alpha_schedule,
        num_candidates=args.num_candidates,
        discount=args.discount,
        time_steps=args.time_steps,
        actor_lr=args.actor_lr,
        critic_lr=args.critic_lr,
        normalize_q_loss=args.normalize_q_loss,
        actor_lr_schedule=args.actor_lr_schedule,
        schedule_steps=args.schedule_steps,
        mfi_draws=args.mfi_draws,
        policy_ema_rate=args.policy_ema_rate,
        flow_time_sampling=args.flow_time_sampling,
        anchor_weight=args.anchor_weight,
        anchor_steps=args.anchor_steps,
        action_horizon=args.action_horizon,
        renoise_time=args.renoise_time,
        renoise_target=args.renoise_target,
        critic_aggregate=args.critic_aggregate,
        target_aggregate=args.target_aggregate,
        noise_scale=args.noise_scale,
        noise_scale_target=args.noise_scale_target,
    )
    network = NetworkConfig(
        policy=args.policy,
        mlp_hidden=args.mlp_hidden or NetworkConfig.mlp_hidden,
        critic_hidden=args.critic_hidden or NetworkConfig.critic_hidden,
        gelu=args.gelu,
    )
    return TrainConfig(
        env_name=env_name,
        data=data,
        eval_env=args.eval_env,
        dataset_dir=args.dataset_dir,
        out_dir=args.out,
        agent=args.agent,
        seed=args.seed,
        offline_steps=args.steps,
        online_steps=args.online_steps,
        batch_size=args.batch_size,
        log_every=args.log_every,
        eval_every=args.eval_every,
        time_budget_minutes=args.time_budget_minutes,
        eval_episodes=args.eval_episodes,
        eval_num_candidates=args.eval_num_candidates,
        eval_replan_every=args.eval_replan_every,
        also_eval_renoise_time=args.also_eval_renoise_time,
        also_eval=also_eval_specs(args.also_eval or ()),
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        threads=args.threads,
        device=(device := resolve_device(args.device or "cpu")),
        precision=resolve_precision(args.precision, torch.device(device)),
        compile=resolve_compile(args.compile, args.steps + args.online_steps, network, args.agent),
        agent_config=agent,
        network=network,
    )


# `--compile auto` compiles where it was measured to pay (docs/performance.md, an AVX2 CPU, fp32):
# MLP networks no wider than 256, whose steps are overhead-bound (compiled 1.3x FQL, 1.5x MFQL
# at 4 x 256), in runs of 20k steps or more (one to two minutes of compiling against 30-40
# minutes of training). At 4 x 512 a step is matmul-bound and compiling was neutral (0.88-1.13x,
# within the machine's noise), and the DiT gained 0.96-1.13x for a longer compile, so those and
# short runs (tests, smoke runs) stay eager unless `--compile` asks.
COMPILE_MIN_STEPS = 20_000
COMPILE_MAX_WIDTH = 256
CXX_COMPILERS = ("g++", "c++", "clang++")


def resolve_compile(requested: str, total_steps: int, network: NetworkConfig, agent: str = "mfql") -> bool:
    """Whether the run compiles its update: on / off as asked, or `auto`'s choice."""
    if requested in ("on", "off"):
        return requested == "on"
    mlp_policy = agent in FLOW_DISTILLED_AGENTS or network.policy == "mlp"
    widths = [*network.critic_hidden, *network.mlp_hidden]
    if total_steps < COMPILE_MIN_STEPS or not mlp_policy or max(widths) > COMPILE_MAX_WIDTH:
        return False
    # torch.compile's CPU backend builds C++; without a compiler it would fail at the first step.
    return any(shutil.which(cxx) for cxx in CXX_COMPILERS)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, if any; refuse to silently reuse a run directory."""
    checkpoints = list_checkpoints(run_dir)
    if resume:
        if not checkpoints:
            raise RunDirectoryError(f"{run_dir}: --resume given but no checkpoint found")
        return checkpoints[-1]
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirectoryError(
            f"{run_dir} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    return None


def outcome_text(result: dict) -> str:
    """An evaluation's outcome for the progress log: its success rate, else its mean return."""
    if result["success_rate"] is not None:
        return f"success {result['success_rate']:.3f}"
    return f"mean return {result['mean_return']:.4g} (the env reports no success)"


class Trainer:
    """The loop: sample, update, log, evaluate, checkpoint; then online interaction if asked."""

    def __init__(self, config: TrainConfig, resume_from: Path | None, data: LoadedData | None = None) -> None:
        """`data`: the run's data already loaded with `config.data` (None: load it here)."""
        from training.data.dataset import normalization_statistics, observation_statistics

        loaded = data or load_training_data(config.env_name, config.dataset_dir, config.data)
        if config.data.source is not None and config.eval_env is None and loaded.eval_env:
            config = replace(config, eval_env=loaded.eval_env)  # a Minari dataset's stored env
        if config.online_steps and config.evaluation_env is None:
            raise ValueError(
                f"--online-steps needs an env to interact with; {config.data.source} names none: pass --eval-env"
            )
        self.config = config
        self.run_dir = Path(config.out_dir)
        self.dataset_provenance = loaded.provenance
        train_set = loaded.train
        self.mean, self.std = normalization_statistics(train_set, config.data.observation_normalization)
        if config.data.observation_normalization == "none":
            # The networks see raw observations, so the normaliser (0, 1) no longer says where
            # they live; the data's scale goes with the run, for export's self-test inputs.
            data_mean, data_std = observation_statistics(train_set)
            scale = {"mean": data_mean.tolist(), "std": data_std.tolist()}
            self.dataset_provenance = {**loaded.provenance, "observation_scale": scale}
        self.agent = build_agent(
            config.agent,
            train_set.obs_dim,
            train_set.action_dim,
            config.agent_config,
            config.network,
            config.offline_steps,
            config.seed,
            config.precision,
            config.compile,
        )
        self.agent.to_device(config.device)  # before a resume: its weights load onto the device
        agent_config = config.agent_config
        self.buffer = ReplayBuffer(
            train_set,
            self.mean,
            self.std,
            config.online_steps,
            config.seed,
            agent_config.action_horizon,
            agent_config.discount,
        )
        # Held-out batches for validation losses (non-OGBench sources), drawn once, the same every time.
        self.validation_batches = self._validation_batches(loaded.val)
        self.pending_actions: list[np.ndarray] = []  # online: the rest of the chunk being executed
        self.step, self.metrics = 0, {}  # metrics: the last evaluation's
        self.last_evaluation: dict | None = None  # evaluate_policy's full result, for callers (mfql-sweep)
        # the last evaluation's other ways of acting (also_eval_variants), by their spec
        self.last_also_evaluations: dict[str, dict] = {}
        # Training wall-clock seconds of the run so far (evaluations excluded), for the time budget.
        self.train_seconds = 0.0
        self.stopped_by_time_budget = False
        if resume_from is not None:
            checkpoint = load_policy_checkpoint(resume_from)
            restore_training_state(checkpoint.path, self.agent, self.buffer, checkpoint.model)
            self.step, self.metrics = checkpoint.step, dict(checkpoint.metrics)
            self.train_seconds = float(self.metrics.pop("train_seconds", 0.0))
            self.metrics.pop("stopped_by_time_budget", None)  # a resume may carry on with a new budget
        self.log = RunLog(self.run_dir, resume_step=self.step if resume_from else None)
        self._cpu_view: ServingPolicy | None = None  # off a CPU device: the copy since the last update

    def serving_view(self) -> ServingPolicy:
        """The live networks behind the serving computation (no copy); a CPU copy of them when
        they train on another device, since evaluation and interaction feed it CPU tensors."""
        normalizer = ObservationNormalizer(self.buffer.mean, self.buffer.std)
        if self._cpu_view is not None:
            return self._cpu_view
        view = ServingPolicy(
            normalizer,
            self.agent.acting_policy,
            self.agent.target_critic,
            self.agent.action_dim,
            self.agent.action_horizon,
            action_bounds_of(self.dataset_provenance),
            self.config.agent_config.acting,
        )
        if self.agent.device.type == "cpu":
            return view
        self._cpu_view = copy.deepcopy(view).cpu()  # one copy per update, however often asked
        return self._cpu_view

    def weights_changed(self) -> None:
        """After an update: the next evaluation off a CPU device copies the networks anew."""
        self._cpu_view = None

    VALIDATION_BATCHES = 4

    def _validation_batches(self, val_set) -> list:
        if val_set is None or self.config.data.source is None:
            return []  # OGBench runs: unchanged (evaluation in the env judges them)
        cfg = self.config.agent_config
        try:
            buffer = ReplayBuffer(
                val_set, self.mean, self.std, 0, self.config.seed, cfg.action_horizon, cfg.discount
            )
        except ValueError as error:  # e.g. no held-out episode is as long as a chunk
            tqdm.write(f"mfql-train: no validation losses: the held-out episodes cannot be sampled ({error})")
            return []
        return [
            buffer.sample(self.config.batch_size).to(self.agent.device)
            for _ in range(self.VALIDATION_BATCHES)
        ]

    @property
    def offline_only(self) -> bool:
        return self.config.evaluation_env is None

    def validate(self) -> dict[str, float]:
        """The step's losses on held-out episodes, without updating anything (`val/` keys).

        The losses draw their noise from a generator of their own, seeded the same at every
        validation, so the training stream (and a resumed run's batches) does not change.
        """
        agent = self.agent
        training_generator = agent.generator
        agent.generator = torch.Generator().manual_seed(self.config.seed + 123_457)
        totals: dict[str, float] = {}
        try:
            for batch in self.validation_batches:
                noises, t = agent.update_noise(self.config.batch_size)
                *_, info = agent.step_losses(agent.nets(), batch, noises, t)
                for key, value in info.items():
                    totals[key] = totals.get(key, 0.0) + float(value.detach()) / len(self.validation_batches)
        finally:
            agent.generator = training_generator
        shown = {
            f"val/{key}": value for key, value in totals.items() if key.endswith("loss") or key.endswith("/q")
        }
        self.log.validation(self.step, shown)
        losses = ", ".join(f"{key} {value:.4g}" for key, value in shown.items() if key.endswith("loss"))
        tqdm.write(f"step {self.step}: held-out {losses}")
        return shown

    def evaluate(self) -> None:
        if self.validation_batches:
            self.metrics = {**self.metrics, **self.validate(), "eval_step": self.step}
        if self.offline_only or self.config.eval_episodes == 0:
            return
        cfg = self.config
        k = cfg.acting_num_candidates
        result = self.roll_out(self.serving_view())
        self.log.evaluation(self.step, result)
        self.last_evaluation = result
        self.metrics = {
            **{key: value for key, value in self.metrics.items() if key.startswith("val/")},
            "success_rate": result["success_rate"],
            "mean_return": result["mean_return"],
            "eval_step": self.step,
            "eval_episodes": cfg.eval_episodes,
            "eval_num_candidates": k,
        }
        tqdm.write(f"step {self.step}: {outcome_text(result)} over {cfg.eval_episodes} episodes (K={k})")
        self.last_also_evaluations = {
            variant.spec: self.also_evaluate(variant) for variant in cfg.also_eval_variants
        }

    def roll_out(self, module: ServingPolicy, num_candidates: int | None = None) -> dict:
        """`evaluate_policy` of this step's episodes (new seeds each step, the same in every run)
        with K candidates (None: as the run acts)."""
        cfg = self.config
        return evaluate_policy(
            module,
            cfg.evaluation_env,
            cfg.eval_episodes,
            num_candidates or cfg.acting_num_candidates,
            cfg.seed + 10_000 * self.step,
            replan_every=cfg.replan_every,
            observation_keys=cfg.data.observation_keys,
        )

    def also_evaluate(self, variant: ActingVariant) -> dict:
        """One more evaluation (`--also-eval-renoise-time`, `--also-eval`): the same episodes and
        seeds, acting as `variant` asks."""
        acting, k = variant.acting(self.config)
        view = copy.copy(self.serving_view())  # the same networks (a shallow copy), acting another way
        view.acting = acting
        result = self.roll_out(view, k)
        self.log.evaluation(self.step, result, also=(variant, acting))
        tqdm.write(f"step {self.step}: acting {variant.label}, {outcome_text(result)}")
        return result

    def run_metrics(self) -> dict:
        """What a checkpoint records and `run` returns: the last evaluation and the training time."""
        stopped = {"stopped_by_time_budget": True} if self.stopped_by_time_budget else {}
        return {**self.metrics, "train_seconds": round(self.train_seconds, 3), **stopped}

    def checkpoint(self) -> Path:
        return save_training_state(
            self.run_dir,
            self.step,
            self.config,
            self.agent,
            self.buffer,
            self.run_metrics(),
            dataset=self.dataset_provenance,
        )

    def run(self, stop_after: int | None = None) -> dict:
        return train_together(
            [self], lambda batches, step: [self.agent.update(batches[0], step)], stop_after
        )[0]

    def log_progress(self, info: dict, bar: tqdm) -> None:
        self.log.train(self.step, info)
        # FQL logs 'bc_flow/loss' where MFQL logs 'mfi/loss'; show whichever exists.
        shown = {
            "critic": "critic/loss",
            "mfi": "mfi/loss",
            "bc": "bc_flow/loss",
            "q": "actor/q",
            "alpha": "alpha",
        }
        bar.set_postfix({label: f"{info[key]:.3g}" for label, key in shown.items() if key in info})

    def _interact(self, env, observation):
        """One environment step with the current policy; the transition joins the buffer.

        A chunked policy is asked for a chunk when the one it is executing runs out (after
        `replan_every` actions) or the episode ends; the steps in between come from the chunk.
        """
        from training.envs import make_eval_env

        if env is None:
            env = make_eval_env(self.config.evaluation_env, self.config.data.observation_keys)
            observation, _ = env.reset(seed=self.config.seed + self.step)
            self.pending_actions = []
            # A resumed run starts a new episode (the env's state is not checkpointed): the
            # interrupted one ends at its last stored row, so no chunk joins the two.
            self.buffer.end_episode()
        if not self.pending_actions:
            module = self.serving_view()
            noise = torch.randn(
                1,
                self.config.agent_config.num_candidates,
                *module.noise_shape,
                generator=self.agent.generator,
            )
            with torch.no_grad():
                chosen = module(torch.as_tensor(observation[None], dtype=torch.float32), noise)[0][0].numpy()
            chunk = chosen.reshape(self.agent.action_horizon, self.agent.action_dim)
            self.pending_actions = list(chunk[: self.config.replan_every])
        action = self.pending_actions.pop(0)
        next_observation, reward, terminated, truncated, info = env.step(action)
        reward = self.config.data.reward.online_reward(reward, bool(info.get("success", terminated)))
        ended = terminated or truncated
        # The buffer holds actions as the policy sees them: [-1, 1], also when the data's were scaled.
        stored = self.serving_view().to_policy_units(torch.as_tensor(action)).numpy()
        self.buffer.add(observation, stored, reward, 1.0 - float(terminated), next_observation, ended)
        if ended:
            next_observation, _ = env.reset(seed=self.config.seed + self.step)
            self.pending_actions = []
        return env, np.asarray(next_observation)


def train_together(trainers: list[Trainer], update, stop_after: int | None = None) -> list[dict]:
    """The training loop, for one run or for several seeds stepping together (`--seeds`).

    `update(batches, step)` performs step `step` for every trainer (batches[i] sampled from
    trainer i's own buffer) and returns their info dicts. Each trainer keeps its own logs,
    evaluations and checkpoints; they share the step count and the wall clock, so a time budget
    stops all of them at the same step.
    """
    lead = trainers[0]
    if len({t.step for t in trainers}) != 1:
        raise ValueError(f"the seeds' checkpoints are at different steps: {[t.step for t in trainers]}")
    cfg = lead.config
    end = min(cfg.total_steps, stop_after) if stop_after else cfg.total_steps
    envs = [(None, None) for _ in trainers]
    label = "mfql-train" if len(trainers) == 1 else f"mfql-train ({len(trainers)} seeds)"
    bar = tqdm(total=cfg.total_steps, initial=lead.step, desc=label, dynamic_ncols=True)
    update_seconds, updates = 0.0, 0
    budget_seconds = cfg.time_budget_minutes * 60 if cfg.time_budget_minutes else None
    compiling = cfg.compile  # the first update of a compiled run compiles it
    clock = time.perf_counter()
    while lead.step < end:
        if budget_seconds is not None and lead.train_seconds >= budget_seconds:
            break  # a resumed run whose budget was already spent
        for i, trainer in enumerate(trainers):
            trainer.step += 1
            if trainer.step > cfg.offline_steps:
                envs[i] = trainer._interact(*envs[i])
        started = time.perf_counter()
        infos = update([t.buffer.sample(cfg.batch_size).to(t.agent.device) for t in trainers], lead.step)
        for trainer in trainers:
            trainer.weights_changed()
        now = time.perf_counter()
        update_seconds += now - started
        updates += 1
        # A compiled update compiles in its first call of the process: setup, not training, so
        # it does not spend the time budget (the first step's own time is dropped with it).
        if compiling:
            compiling = False
        else:
            for trainer in trainers:
                trainer.train_seconds += now - clock
        clock = now
        step = lead.step
        out_of_time = budget_seconds is not None and lead.train_seconds >= budget_seconds
        if out_of_time:
            for trainer in trainers:
                trainer.stopped_by_time_budget = True
            tqdm.write(
                f"step {step}: time budget of {cfg.time_budget_minutes:g} min spent; "
                "final evaluation and checkpoint"
            )
        if step % cfg.log_every == 0 or step == end or out_of_time:
            # Gradient steps per second since the last log line: sampling + update only,
            # so evaluations and checkpoints do not dilute it (all seeds together: one step each).
            for trainer, info in zip(trainers, infos, strict=True):
                info["time/steps_per_s"] = updates / update_seconds
                trainer.log_progress(info, bar)
            update_seconds, updates = 0.0, 0
        bar.update(1)
        final = step == cfg.total_steps or out_of_time
        for trainer in trainers:
            wants_outcome = cfg.eval_episodes > 0 or trainer.validation_batches
            if wants_outcome and ((cfg.eval_every and step % cfg.eval_every == 0) or final):
                trainer.evaluate()
            if step % cfg.checkpoint_every == 0 or step == end or out_of_time:
                trainer.checkpoint()
        clock = time.perf_counter()  # evaluations and checkpoints do not spend the budget
        if out_of_time:
            break
    bar.close()
    for trainer in trainers:
        trainer.log.close()
    return [trainer.run_metrics() for trainer in trainers]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected distinct seeds, e.g. 0,1,2")
    return seeds


def resolve_run(config: TrainConfig, args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """The run's config and the checkpoint it resumes from (None: a new run)."""
    run_dir = Path(config.out_dir)
    resume_from = prepare_run_dir(run_dir, args.resume, args.overwrite)
    if resume_from is None:
        return config, None
    stored = load_policy_checkpoint(resume_from).config
    # The stored run defines the maths (precision included); only the online phase may be
    # extended, and the thread count, compilation (speed and float rounding, not the
    # maths), the device, the time budget, the second evaluation, how acting ranks the
    # candidates (acting only: the critic's target keeps the mean) and acting's noise scale
    # (unless the target uses it too) may be set anew.
    agent_config = stored.agent_config
    if args.critic_aggregate is not None:
        agent_config = replace(agent_config, critic_aggregate=args.critic_aggregate)
    if args.noise_scale is not None and args.noise_scale != agent_config.noise_scale:
        if agent_config.noise_scale_target:  # the target's noise: the run's maths
            raise ValueError(
                f"--noise-scale {args.noise_scale:g}: {run_dir} trains its critic's target at noise scale "
                f"{agent_config.noise_scale:g} (--noise-scale-target); a resume keeps it"
            )
        agent_config = replace(agent_config, noise_scale=args.noise_scale)  # acting only
    config = replace(
        stored,
        agent_config=agent_config,
        online_steps=max(stored.online_steps, args.online_steps),
        out_dir=str(run_dir),
        threads=args.threads or stored.threads,
        device=resolve_device(args.device or stored.device),
        compile=stored.compile if args.compile == "auto" else args.compile == "on",
        time_budget_minutes=args.time_budget_minutes or stored.time_budget_minutes,
        also_eval_renoise_time=(
            stored.also_eval_renoise_time
            if args.also_eval_renoise_time is None
            else args.also_eval_renoise_time
        ),
        also_eval=stored.also_eval if args.also_eval is None else also_eval_specs(args.also_eval),
    )
    return config, resume_from


def configure_torch(config: TrainConfig) -> None:
    """The process-wide torch settings a run trains under (mfql-train's and each mfql-sweep trial's)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.compile:
        # A persistent compile cache: the first run pays the compile, later ones reuse it.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache/mfql/torchinductor"))
    # Zero-initialised adaLN/head layers drift through denormal floats, which made CPU
    # matmuls ~3x slower (DiT: 1.6 -> 4.5 steps/s); flushing them changes no result that matters.
    torch.set_flush_denormal(True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        seeds = parse_seeds(args.seeds) if args.seeds else None
    except ValueError as exc:  # a setting out of range, or an option the method does not have
        print(f"mfql-train: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(config.out_dir)
    try:
        # A new run reads (and checks) its data before --overwrite deletes anything, so a bad
        # source leaves the old run as it was; the seeds of one run share the loaded arrays.
        loaded = None if args.resume else load_training_data(config.env_name, config.dataset_dir, config.data)
        if seeds is None:
            runs = [resolve_run(config, args)]
        else:
            # One run directory per seed, each a complete run (mfql-eval / mfql-export read it).
            if args.overwrite and run_dir.exists():
                shutil.rmtree(run_dir)
            runs = [
                resolve_run(replace(config, seed=seed, out_dir=str(run_dir / f"seed{seed}")), args)
                for seed in seeds
            ]
        config = runs[0][0]
        configure_torch(config)
        trainers = [Trainer(run_config, resume_from, loaded) for run_config, resume_from in runs]
        if len(trainers) == 1:
            results = [trainers[0].run(stop_after=args.stop_after)]
        else:
            # Measured on a CPU (docs/performance.md): N seeds in one step cost about N steps of one,
            # so there separate runs, one per core, finish sooner; say so rather than let it surprise.
            print(
                f"mfql-train: {len(trainers)} seeds in one process, one vectorised step; on a CPU this takes as long as "
                "or longer than the runs one after another (docs/performance.md)",
                file=sys.stderr,
            )
            stacked = StackedSeeds([t.agent for t in trainers], compile=config.compile)
            results = train_together(trainers, stacked, stop_after=args.stop_after)
    except (RunDirectoryError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"mfql-train: {exc}", file=sys.stderr)
        return 2
    for trainer, metrics in zip(trainers, results, strict=True):
        print(
            f"mfql-train: finished at step {trainer.step}; run directory {trainer.run_dir}; metrics {metrics}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
