"""One trial of a sweep: one `mfql-train` run in the trial's own process, reported to Ray Tune.

The trial builds its TrainConfig exactly as `mfql-train` does (the same parser, so every flag
the trainer has works in an arm) and runs the trainer's own loop. Every checkpoint the trainer
writes is reported to Tune with the evaluation and losses of that step, so Tune holds the curve
and the last checkpoint; a trial that dies (a worker killed, a node lost) restarts from
`tune.get_checkpoint()`, copied back into its run directory as the step directory `mfql-train
--resume` reads. When training ends the final checkpoint is evaluated as `mfql-eval` would
(the study's episodes and seeds) and that row is reported and kept in the run directory
(`final_evaluation.json`), where `mfql-sweep --collect` finds it.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import ray
from ray import tune

from training.checkpoint import CONFIG_FILE, PolicyCheckpoint, list_checkpoints, step_dir_name
from training.config import ActingVariant
from training.evaluate import evaluate_policy
from training.inference import ServingPolicy, load_serving_policy, serving_policy_from_checkpoint
from training.sweep.tables import FINAL_EVALUATION, finished_row, run_directory
from training.train import Trainer, build_parser, config_from_args, configure_torch, resolve_run

# Evaluation seeds of the final evaluation: the same for every arm, apart from training's.
FINAL_EVAL_SEED = 1_000_000


class ReportingTrainer(Trainer):
    """The trainer, reporting each checkpoint to Tune with that step's evaluation and losses."""

    def __init__(self, config, resume_from: Path | None) -> None:
        super().__init__(config, resume_from)
        self.last_info: dict = {}  # the losses of the last log step

    def log_progress(self, info: dict, bar) -> None:
        super().log_progress(info, bar)
        self.last_info = dict(info)

    def checkpoint(self) -> Path:
        path = super().checkpoint()
        metrics = {"step": self.step, **self.last_info}
        evaluation = self.last_evaluation
        if evaluation is not None and self.metrics.get("eval_step") == self.step:
            for key in ("success_rate", "success_rate_stderr", "mean_return", "episodes"):
                metrics[f"eval/{key}"] = evaluation[key]
            for spec, also in self.last_also_evaluations.items():  # the other ways of acting
                for key in ("success_rate", "mean_return"):
                    metrics[f"eval_also/{spec}/{key}"] = also[key]
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(path)))
        return path


def restore_into(run_dir: Path, checkpoint: tune.Checkpoint) -> None:
    """Make Tune's checkpoint the run directory's newest step, so `--resume` continues from it
    (newer steps a dying trial wrote but never reported go: the run repeats them exactly)."""
    with checkpoint.as_directory() as source:
        step = json.loads((Path(source) / CONFIG_FILE).read_text())["step"]
        target = run_dir / "checkpoints" / step_dir_name(step)
        if not target.is_dir():
            shutil.copytree(source, run_dir / "checkpoints" / f"tmp_{target.name}")
            (run_dir / "checkpoints" / f"tmp_{target.name}").rename(target)
    for newer in list_checkpoints(run_dir):
        if int(newer.name.split("_")[1]) > step:
            shutil.rmtree(newer)


def trial_flags(sweep: dict, task: str, arm: str, seed: int, run_dir: Path) -> list[str]:
    """The run's `mfql-train` flags: the sweep's, the task's env, the seed, the arm's, then the
    flags given after `--` (last, so they win)."""
    return [
        *sweep["train_flags"],
        *("--env", sweep["envs"][task], "--seed", str(seed), "--out", str(run_dir)),
        *sweep["arm_flags"][arm],
        *sweep["extra_flags"],
    ]


def train_trial(config: dict) -> None:
    """The Tune trainable: config = {"task", "arm", "seed", "sweep": the sweep's constant settings}."""
    sweep, task, arm, seed = config["sweep"], config["task"], config["arm"], config["seed"]
    run_dir = run_directory(Path(sweep["out"]), task, arm, seed)
    restored = tune.get_checkpoint()
    if restored is None and sweep["keep_finished"] and (row := finished_row(run_dir)) is not None:
        tune.report({"step": row["steps_trained"], "final": row})
        return
    if restored is not None:
        restore_into(run_dir, restored)
    args = build_parser().parse_args(trial_flags(sweep, task, arm, seed, run_dir))
    args.resume = restored is not None or (sweep["keep_finished"] and bool(list_checkpoints(run_dir)))
    args.overwrite = not args.resume
    if args.eval_every and args.eval_episodes:  # every evaluation reaches Tune with its checkpoint
        args.checkpoint_every = math.gcd(args.checkpoint_every, args.eval_every)
    train_config, resume_from = resolve_run(config_from_args(args), args)
    configure_torch(train_config)
    started = time.perf_counter()
    trainer = ReportingTrainer(train_config, resume_from)
    trainer.run()
    row = final_row(trainer, arm, seed, sweep["final_episodes"], time.perf_counter() - started)
    (run_dir / FINAL_EVALUATION).write_text(json.dumps(row, indent=2))
    tune.report({"step": trainer.step, "final": row, "node_id": ray.get_runtime_context().get_node_id()})


def final_row(trainer: Trainer, arm: str, seed: int, episodes: int, seconds: float) -> dict:
    """The final checkpoint evaluated as `mfql-eval` does, and the run's speed: one table row."""
    run_dir = trainer.run_dir
    module, checkpoint = load_serving_policy(run_dir)
    config = checkpoint.config
    report = final_evaluation(module, checkpoint, episodes, seed)
    with open(run_dir / "metrics.csv", newline="") as handle:
        logged = list(csv.DictReader(handle))
    also = [also_evaluation(checkpoint, variant, episodes, seed) for variant in config.also_eval_variants]
    return {
        "method": arm,
        "seed": seed,
        "env": config.env_name,
        "success_rate": report["success_rate"],
        "success_rate_stderr": report["success_rate_stderr"],
        # the mean of each episode's summed reward: the signal where no episode succeeds yet
        "mean_return": report["mean_return"],
        "wall_seconds": round(seconds, 1),
        # fewer than --steps when `--time-budget-minutes` stopped the run
        "steps_trained": checkpoint.step,
        # Every log interval holds the same number of steps (a budget-stopped run's last one
        # may hold fewer): their harmonic mean is steps / training time.
        "train_steps_per_second": statistics.harmonic_mean(float(r["time/steps_per_s"]) for r in logged),
        "policy_latency_ms_p50": report["policy_latency_ms"]["p50"],
        "num_candidates": report["num_candidates"],
        **_progress_of(report),
        "run_dir": str(run_dir),
        **({"also": also} if also else {}),
    }


def final_evaluation(
    module: ServingPolicy,
    checkpoint: PolicyCheckpoint,
    episodes: int,
    seed: int,
    num_candidates: int | None = None,
) -> dict:
    """`evaluate_policy` of the final checkpoint as `mfql-eval` does, on the study's episodes,
    with K candidates (None: as the run acts)."""
    config = checkpoint.config
    return evaluate_policy(
        module, config.env_name, episodes, num_candidates or config.acting_num_candidates,
        FINAL_EVAL_SEED + 1000 * seed, progress=False, replan_every=config.replan_every,
    )  # fmt: skip


def also_evaluation(checkpoint: PolicyCheckpoint, variant: ActingVariant, episodes: int, seed: int) -> dict:
    """The final checkpoint (already loaded) acting as one of TrainConfig.also_eval_variants asks,
    on the final evaluation's episodes and seeds: `tables.with_also_rows` makes it a row of its own."""
    acting, k = variant.acting(checkpoint.config)
    module = serving_policy_from_checkpoint(checkpoint, variant.overrides)
    report = final_evaluation(module, checkpoint, episodes, seed, k)
    return {
        "variant": variant.spec,
        "label": variant.label,
        "renoise_time": acting.renoise_time or 0.0,
        "critic_aggregate": acting.critic_aggregate,
        "num_candidates": k,
        **({"noise_scale": acting.noise_scale} if acting.noise_scale != 1.0 else {}),
        **{key: report[key] for key in ("success_rate", "success_rate_stderr", "mean_return")},
        "policy_latency_ms_p50": report["policy_latency_ms"]["p50"],
        **_progress_of(report),
    }


def _progress_of(report: dict) -> dict:
    """Puzzle envs' presses made and presses left (`evaluate_policy`'s `puzzle_progress`), else nothing."""
    return {"puzzle_progress": report["puzzle_progress"]} if "puzzle_progress" in report else {}
