"""What OGBench's data collection does differently per manipulation environment: data, not branches.

Each row records facts from OGBench's `data_gen_scripts/generate_manipspace.py`: which scripted
oracles the environment's data-collection mode hands tasks to, how likely a cube task is to
stack, and which extra raw keys the files carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.data.errors import UnknownEnvError


@dataclass(frozen=True)
class EnvFamily:
    oracle_tasks: tuple[str, ...]  # task kinds the env's data-collection mode hands out
    p_stack_range: tuple[float, float]  # per-episode P(stack the target cube), drawn uniformly
    has_button_states: bool  # files carry 'button_states' (needed to relabel rewards)
    gripper_always_closed: bool = False  # puzzle oracles press buttons with a closed gripper
    cube_markov_max_step: int = 200  # OGBench passes 100 for scene (the oracle resets it to 200)
    needs_health_check: bool = False  # scene: reject episodes where the cube leaves the view


_SCENE_TASKS = ("cube", "button", "drawer", "window")
# The else-branch of OGBench's p_stack choice (0.5) applies to scene and puzzle, whose
# set_new_target accepts the argument but only scene's single cube could ever use it.
ENV_FAMILIES: dict[str, EnvFamily] = {
    "cube-single-v0": EnvFamily(("cube",), (0.0, 0.0), has_button_states=False),
    "cube-double-v0": EnvFamily(("cube",), (0.0, 0.25), has_button_states=False),
    "cube-triple-v0": EnvFamily(("cube",), (0.05, 0.35), has_button_states=False),
    "cube-quadruple-v0": EnvFamily(("cube",), (0.1, 0.5), has_button_states=False),
    "cube-octuple-v0": EnvFamily(("cube",), (0.0, 0.35), has_button_states=False),
    "scene-v0": EnvFamily(
        _SCENE_TASKS, (0.5, 0.5), has_button_states=True, cube_markov_max_step=100, needs_health_check=True
    ),
    "puzzle-3x3-v0": EnvFamily(("button",), (0.5, 0.5), has_button_states=True, gripper_always_closed=True),
    "puzzle-4x4-v0": EnvFamily(("button",), (0.5, 0.5), has_button_states=True, gripper_always_closed=True),
    "puzzle-4x5-v0": EnvFamily(("button",), (0.5, 0.5), has_button_states=True, gripper_always_closed=True),
    "puzzle-4x6-v0": EnvFamily(("button",), (0.5, 0.5), has_button_states=True, gripper_always_closed=True),
}

DATASET_TYPES = (
    "play",
    "noisy",
)  # play: PlanOracle with correlated noise; noisy: MarkovOracle + Gaussian noise


def env_family(env_name: str) -> EnvFamily:
    """The family row for a data-collection env id such as 'cube-single-v0'."""
    if env_name not in ENV_FAMILIES:
        raise UnknownEnvError(
            f"unknown data-collection env {env_name!r}: expected one of {sorted(ENV_FAMILIES)}"
        )
    return ENV_FAMILIES[env_name]
