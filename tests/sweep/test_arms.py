"""The presets' arms mean what their names say, and every arm of every preset builds a TrainConfig."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.sweep.arms import ARMS, PRESETS, GridError, arm_flags, task_env, task_envs
from training.sweep.cli import build_parser, check_flags, shared_settings


def test_every_alpha_arm_trains_at_the_alpha_it_is_named_after():
    """The puzzle sweep reads alpha from the arm's name: alpha-N must pass `--alpha N` once."""
    assert {"alpha-100", "alpha-300", "alpha-1000", "alpha-3000"} <= set(ARMS)
    for name, (_, flags) in ARMS.items():
        if re.fullmatch(r"alpha-\d+", name):
            assert flags.count("--alpha") == 1, name
            assert float(flags[flags.index("--alpha") + 1]) == float(name.removeprefix("alpha-")), name


def test_task_env_names_each_singletask_task_of_a_family():
    assert task_env("puzzle-3x3-play-singletask-v0", 3) == "puzzle-3x3-play-singletask-task3-v0"
    assert task_env("cube-single-play-singletask-task2-v0", 5) == "cube-single-play-singletask-task5-v0"
    with pytest.raises(GridError, match="singletask env name"):
        task_env("cube-single-play-v0", 1)


def test_tasks_are_numbers_of_the_family_or_whole_env_names():
    envs = task_envs("puzzle-3x3-play-singletask-v0", "1,scene-play-singletask-task2-v0")
    assert envs == {
        "task1": "puzzle-3x3-play-singletask-task1-v0",
        "scene-play-singletask-task2-v0": "scene-play-singletask-task2-v0",
    }
    assert task_envs("cube-single-play-singletask-task2-v0", "") == {
        "": "cube-single-play-singletask-task2-v0"
    }


def test_unknown_arms_are_refused_with_the_known_ones():
    with pytest.raises(GridError, match="unknown arm"):
        arm_flags(PRESETS["study"], ["paper", "no-such-arm"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_arm_of_every_preset_builds_a_train_config(preset, tmp_path):
    args = build_parser().parse_args(
        ["--preset", preset, "--out", str(tmp_path), "--dataset-dir", str(tmp_path)]
    )
    shared = shared_settings(args, {"": "cube-single-play-singletask-task2-v0"}, list(PRESETS[preset].arms))
    check_flags(shared)  # raises on a flag mfql-train does not take or a setting it refuses


def test_a_bad_forwarded_flag_fails_before_ray_starts(tmp_path):
    args = build_parser().parse_args(["--arms", "fql", "--out", str(tmp_path), "--", "--mfi-draws", "4"])
    shared = shared_settings(args, {"": "cube-single-play-singletask-task2-v0"}, ["fql"])
    with pytest.raises(ValueError, match="MFQL options"):
        check_flags(shared)


def test_the_sweep_forwards_flags_after_the_double_dash():
    args = build_parser().parse_args(["--steps", "5", "--", "--compile", "on", "--alpha", "3"])
    assert args.train_flags == ["--compile", "on", "--alpha", "3"] and args.steps == 5
    assert Path("runs/study") == args.out


def test_every_preset_has_default_arms_it_defines():
    """`mfql-sweep --preset P` (and `--collect`) without --arms runs P's default arms."""
    from training.sweep.arms import PRESETS
    from training.sweep.cli import DEFAULT_ARMS

    assert set(DEFAULT_ARMS) == set(PRESETS)
    for name, arms in DEFAULT_ARMS.items():
        assert set(arms.split(",")) <= set(PRESETS[name].arms), name
