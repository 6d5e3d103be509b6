"""`--time-budget-minutes`: a run stops once its training time is spent, as if its last step had
been reached (final evaluation and checkpoint), and a resume continues the count."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import training.train
from training.checkpoint import list_checkpoints, load_policy_checkpoint
from training.config import NetworkConfig, TrainConfig, resolve_agent_config
from training.train import Trainer, build_parser, config_from_args

TASK = "cube-single-play-singletask-task2-v0"
STEPS = 30
# Far below the time of one gradient step, so the first step spends it: no test depends on speed.
SPENT_AFTER_ONE_STEP = 1e-9


@pytest.fixture
def evaluations(monkeypatch) -> list[int]:
    """Steps at which the trainer evaluated (the env rollout replaced by a fixed answer)."""
    steps: list[int] = []

    def fake_evaluation(
        module, env_name, episodes, num_candidates, seed, progress=True, replan_every=None, **_
    ):
        steps.append(seed)
        return {
            "success_rate": 0.5,
            "success_rate_stderr": 0.1,
            "mean_return": -100.0,
            "mean_episode_length": 200.0,
            "episodes": episodes,
            "num_candidates": num_candidates,
        }

    monkeypatch.setattr(training.train, "evaluate_policy", fake_evaluation)
    return steps


def _config(data_dir: Path, out: Path, budget: float | None) -> TrainConfig:
    return TrainConfig(
        env_name=TASK,
        dataset_dir=str(data_dir),
        out_dir=str(out),
        seed=3,
        offline_steps=STEPS,
        batch_size=16,
        log_every=10,
        eval_every=0,
        eval_episodes=2,
        checkpoint_every=1000,
        time_budget_minutes=budget,
        agent_config=resolve_agent_config(TASK, num_candidates=2),
        network=NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16)),
    )


def test_a_spent_budget_ends_the_run_with_a_final_evaluation_and_checkpoint(
    two_episode_data_dir, tmp_path, evaluations
):
    trainer = Trainer(_config(two_episode_data_dir, tmp_path / "run", SPENT_AFTER_ONE_STEP), None)
    metrics = trainer.run()
    assert trainer.step == 1
    assert len(evaluations) == 1  # the final evaluation, at the step the budget ran out
    assert len(list_checkpoints(tmp_path / "run")) == 1
    stored = load_policy_checkpoint(tmp_path / "run")
    assert stored.step == 1
    assert stored.metrics["stopped_by_time_budget"] is True
    assert stored.metrics["success_rate"] == 0.5
    assert 0 < stored.metrics["train_seconds"] == metrics["train_seconds"]


def test_a_compiled_runs_first_step_compiling_does_not_spend_the_budget(
    two_episode_data_dir, tmp_path, evaluations, monkeypatch
):
    """The first update of a --compile run compiles (minutes): the budget starts counting after it."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the compiled path, uncompiled
    config = replace(_config(two_episode_data_dir, tmp_path / "run", SPENT_AFTER_ONE_STEP), compile=True)
    trainer = Trainer(config, None)
    trainer.run()
    assert trainer.step == 2  # step 1 (the compile) was not counted; step 2 spent the budget
    assert load_policy_checkpoint(tmp_path / "run").metrics["stopped_by_time_budget"] is True


def test_a_resume_continues_the_count_and_may_set_a_new_budget(two_episode_data_dir, tmp_path, evaluations):
    run = tmp_path / "run"
    Trainer(_config(two_episode_data_dir, run, SPENT_AFTER_ONE_STEP), None).run()
    spent = load_policy_checkpoint(run).metrics["train_seconds"]

    # the same budget again: nothing is left, so nothing runs
    again = Trainer(_config(two_episode_data_dir, run, SPENT_AFTER_ONE_STEP), list_checkpoints(run)[-1])
    again.run()
    assert again.step == 1 and again.train_seconds == pytest.approx(spent, abs=1e-3)

    # no budget: the run carries on to its last step, counting on from what was spent
    carried = Trainer(_config(two_episode_data_dir, run, None), list_checkpoints(run)[-1])
    metrics = carried.run()
    assert carried.step == STEPS
    assert "stopped_by_time_budget" not in metrics
    assert metrics["train_seconds"] > spent
    assert load_policy_checkpoint(run).step == STEPS


def test_the_cli_flag_reaches_the_config_and_must_be_positive(two_episode_data_dir, tmp_path):
    args = build_parser().parse_args(
        [
            "--env",
            TASK,
            "--dataset-dir",
            str(two_episode_data_dir),
            "--out",
            str(tmp_path / "r"),
            "--time-budget-minutes",
            "90",
        ]
    )
    assert config_from_args(args).time_budget_minutes == 90
    with pytest.raises(ValueError, match="time_budget_minutes must be > 0"):
        replace(_config(two_episode_data_dir, tmp_path / "r", None), time_budget_minutes=0.0)
