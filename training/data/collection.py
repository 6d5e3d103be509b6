"""One OGBench data-collection episode: a scripted oracle drives the env in data-collection mode.

Facts from OGBench's `data_gen_scripts/generate_manipspace.py` (the code is ours):
- the env runs with `terminate_at_goal=False`, `mode='data_collection'` and a time limit of
  `episode_length` steps, so every episode has exactly that many rows;
- 'play' uses the plan oracles (keyframes + temporally correlated noise, scale 0.1, Gaussian
  smoothing 0.5); 'noisy' uses the Markov oracles (min_norm 0.4) plus per-step Gaussian noise
  with per-episode std xi ~ U(0, 0.1), scaled (1, 1, 1, 3, 10) over (x, y, z, yaw, gripper);
- when the oracle finishes a task the env sets a new target (`set_new_target(p_stack)`),
  so one episode chains many tasks; p_stack is drawn once per episode;
- row t stores the observation *before* action t, the action, `terminal = done` after it, and
  the env's `prev_qpos`/`prev_qvel`/`prev_button_states` (the state the observation shows);
- scene episodes where the cube leaves the camera's view (and is not in the drawer) are redone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import gymnasium
import numpy as np

from training.data.env_families import DATASET_TYPES, EnvFamily, env_family

MARKOV_NOISE_SCALES = np.array([1.0, 1.0, 1.0, 3.0, 10.0])  # x, y, z, yaw, gripper; times xi
# OGBench's file dtypes: terminals bool, button_states int64, everything else float32.
RAW_DTYPES = {
    "observations": np.float32,
    "actions": np.float32,
    "terminals": bool,
    "qpos": np.float32,
    "qvel": np.float32,
    "button_states": np.int64,
}


@dataclass(frozen=True)
class CollectionConfig:
    env_name: str = "cube-single-v0"  # data-collection env id (a key of ENV_FAMILIES)
    dataset_type: str = "play"  # 'play' (plan oracles) or 'noisy' (Markov oracles)
    episode_length: int = 1001  # OGBench's max_episode_steps: rows per episode
    noise: float = 0.1  # play: plan noise scale; noisy: upper bound of the per-episode std xi
    noise_smoothing: float = 0.5  # play: Gaussian filter sigma (in steps) over the plan noise
    min_norm: float = 0.4  # noisy: minimum norm of the Markov oracles' relative moves

    def __post_init__(self) -> None:
        env_family(self.env_name)
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"dataset type must be one of {DATASET_TYPES}; got {self.dataset_type!r}")
        if self.episode_length < 2:
            raise ValueError(f"episode_length must be at least 2; got {self.episode_length}")


def build_oracles(env: gymnasium.Env, family: EnvFamily, config: CollectionConfig) -> dict:
    """Oracle per task kind, configured as OGBench's collection script configures them."""
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    closed = {"gripper_always_closed": True} if family.gripper_always_closed else {}
    if config.dataset_type == "play":
        plan = {"env": env, "noise": config.noise, "noise_smoothing": config.noise_smoothing}
        makers = {
            "cube": lambda: CubePlanOracle(**plan),
            "button": lambda: ButtonPlanOracle(**plan, **closed),
            "drawer": lambda: DrawerPlanOracle(**plan),
            "window": lambda: WindowPlanOracle(**plan),
        }
    else:
        markov = {"env": env, "min_norm": config.min_norm}
        makers = {
            "cube": lambda: CubeMarkovOracle(**markov, max_step=family.cube_markov_max_step),
            "button": lambda: ButtonMarkovOracle(**markov, **closed),
            "drawer": lambda: DrawerMarkovOracle(**markov),
            "window": lambda: WindowMarkovOracle(**markov),
        }
    return {task: makers[task]() for task in family.oracle_tasks}


def scene_episode_is_healthy(qpos: np.ndarray) -> bool:
    """OGBench's scene check: the cube stays in view, or sits in the drawer when far left."""
    cube_y, cube_z = qpos[:, 15], qpos[:, 16]
    too_far_right = cube_y >= 0.29
    far_left_outside_drawer = (cube_y <= -0.3) & ((cube_z < 0.06) | (cube_z > 0.08))
    return not (too_far_right.any() or far_left_outside_drawer.any())


class EpisodeCollector:
    """Owns one env and its oracles; `collect(seeds)` returns one episode's raw rows."""

    def __init__(self, config: CollectionConfig) -> None:
        import ogbench.manipspace  # noqa: F401  (registers the env ids)

        self.config = config
        self.family = env_family(config.env_name)
        self.env = gymnasium.make(
            config.env_name,
            terminate_at_goal=False,
            mode="data_collection",
            max_episode_steps=config.episode_length,
        )
        self.oracles = build_oracles(self.env, self.family, config)

    def collect(self, env_seed: int, oracle_seed: int) -> dict[str, np.ndarray]:
        # The oracles (and OGBench's per-episode draws) use numpy's global generator; seeding it
        # and the env per episode makes an episode independent of which process ran the ones before.
        np.random.seed(oracle_seed)
        observation, info = self.env.reset(seed=env_seed)
        while True:
            rows = self._run_episode(observation, info)
            if not self.family.needs_health_check or scene_episode_is_healthy(rows["qpos"]):
                return rows
            # Redo with the generators as they are now, as OGBench's retry loop does.
            observation, info = self.env.reset()

    def _run_episode(self, observation: np.ndarray, info: dict) -> dict[str, np.ndarray]:
        p_stack = np.random.uniform(*self.family.p_stack_range)
        markov = self.config.dataset_type == "noisy"
        xi = np.random.uniform(0.0, self.config.noise) if markov else 0.0
        oracle = self.oracles[info["privileged/target_task"]]
        oracle.reset(observation, info)
        rows = defaultdict(list)
        done = False
        while not done:
            action = np.asarray(oracle.select_action(observation, info), dtype=np.float64)
            if markov:
                action = action + np.random.normal(0.0, xi * MARKOV_NOISE_SCALES, action.shape)
            action = np.clip(action, -1.0, 1.0)
            next_observation, _, terminated, truncated, info = self.env.step(action)
            done = terminated or truncated
            if oracle.done:
                target_observation, target_info = self.env.unwrapped.set_new_target(p_stack=p_stack)
                oracle = self.oracles[target_info["privileged/target_task"]]
                oracle.reset(target_observation, target_info)
            rows["observations"].append(observation)
            rows["actions"].append(action)
            rows["terminals"].append(done)
            rows["qpos"].append(info["prev_qpos"])
            rows["qvel"].append(info["prev_qvel"])
            if self.family.has_button_states:
                rows["button_states"].append(info["prev_button_states"])
            observation = next_observation
        return {key: np.asarray(values, dtype=RAW_DTYPES[key]) for key, values in rows.items()}

    def close(self) -> None:
        self.env.close()
