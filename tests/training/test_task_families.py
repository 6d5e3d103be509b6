"""`TASK_FAMILIES`: a family's studied settings are what `mfql-train --env ...` trains with."""

from __future__ import annotations

from training.config import AgentConfig, resolve_agent_config
from training.train import build_parser, config_from_args

PUZZLE_TASK1 = "puzzle-3x3-play-singletask-task1-v0"


def test_puzzle_3x3_mfql_defaults_are_the_studied_constant_actor_lr_and_alpha_1000():
    config = resolve_agent_config(PUZZLE_TASK1, "reference")
    assert (config.alpha, config.num_candidates, config.discount) == (1000.0, 5, 0.99)
    assert (config.actor_lr_schedule, config.actor_lr) == ("constant", 3e-4)


def test_a_flag_still_overrides_the_family_and_other_families_keep_the_reference_schedule():
    given = resolve_agent_config(PUZZLE_TASK1, "reference", actor_lr_schedule="warmup-cosine", actor_lr=1e-4)
    assert (given.actor_lr_schedule, given.actor_lr) == ("warmup-cosine", 1e-4)
    cube = resolve_agent_config("cube-single-play-singletask-task2-v0", "reference")
    assert (cube.actor_lr_schedule, cube.actor_lr) == (AgentConfig.actor_lr_schedule, AgentConfig.actor_lr)
    assert resolve_agent_config("puzzle-4x4-play-singletask-task1-v0").actor_lr_schedule == "warmup-cosine"


def test_fql_on_puzzle_keeps_its_own_learning_rate():
    config = resolve_agent_config(PUZZLE_TASK1, agent="fql")
    assert (config.actor_lr, config.critic_lr, config.alpha, config.num_candidates) == (3e-4, 3e-4, 1000.0, 1)
    assert config.actor_lr_schedule == AgentConfig.actor_lr_schedule


def test_the_embedded_puzzle_models_flags_are_the_family_defaults(tmp_path):
    """`make puzzle-model` spells its settings out; without them the same agent trains."""
    common = ["--env", PUZZLE_TASK1, "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "run")]
    common += ["--hyperparameters", "reference"]
    recipe = [*common, "--actor-lr-schedule", "constant", "--actor-lr", "3e-4", "--alpha", "1000"]
    spelled = config_from_args(build_parser().parse_args(recipe)).agent_config
    assert config_from_args(build_parser().parse_args(common)).agent_config == spelled


def test_the_studys_arms_mean_the_same_on_puzzle_as_on_cube(tmp_path):
    """The study preset's arms named for the paper's schedule spell it out, and lr-constant is puzzle's default."""
    from training.sweep.arms import ARMS, BASE

    def agent(env: str, arm: str) -> AgentConfig:
        flags = ["--env", env, "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "run")]
        return config_from_args(build_parser().parse_args([*flags, *BASE, *ARMS[arm][1]])).agent_config

    cube = "cube-single-play-singletask-task2-v0"
    for arm in ("paper", "horizon-1M", "paper-draws-4", "lr-constant", "alpha-1000"):
        on_cube, on_puzzle = agent(cube, arm), agent(PUZZLE_TASK1, arm)
        assert (on_puzzle.actor_lr_schedule, on_puzzle.actor_lr) == (
            on_cube.actor_lr_schedule,
            on_cube.actor_lr,
        )
    assert agent(PUZZLE_TASK1, "paper").actor_lr_schedule == "warmup-cosine"
    assert agent(PUZZLE_TASK1, "lr-constant") == agent(PUZZLE_TASK1, "alpha-1000")
