"""The env a run evaluates in: an OGBench singletask name, a Minari dataset's stored env, or a gymnasium id.

`minari:<id>` rebuilds the env the dataset recorded (`recover_environment`, its eval env where
it names one; it needs that env's packages, e.g. gymnasium[mujoco]); any other name that is
not an OGBench singletask name is passed to `gymnasium.make`. Dict observations are flattened
in the order of the run's observation keys, exactly as training read them.
"""

from __future__ import annotations

import gymnasium
import numpy as np

from training.data.errors import DatasetError


class FlatObservation(gymnasium.ObservationWrapper):
    """A Dict observation as one float32 vector of the chosen keys, in their order."""

    def __init__(self, env: gymnasium.Env, keys: tuple[str, ...]) -> None:
        super().__init__(env)
        self.keys = tuple(keys)
        size = sum(int(np.prod(env.observation_space[key].shape)) for key in self.keys)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (size,), np.float32)

    def observation(self, observation) -> np.ndarray:
        from training.data.minari_files import flatten_observation

        return flatten_observation(observation, self.keys)


def make_eval_env(spec: str, observation_keys: tuple[str, ...] | None = None) -> gymnasium.Env:
    """A fresh env for `spec` (module docstring); observations flattened to the run's keys."""
    from training.data.minari_files import PREFIX, load_minari
    from training.data.sources import is_ogbench_name

    if spec.startswith(PREFIX):
        dataset = load_minari(spec[len(PREFIX) :])
        try:
            env = dataset.recover_environment(eval_env=True)
        except (ValueError, gymnasium.error.Error, ImportError, ModuleNotFoundError, AttributeError) as error:
            raise DatasetError(
                f"{spec}: cannot rebuild its env ({type(error).__name__}: {error}); install the env's packages "
                "(gymnasium[mujoco] for mujoco/*, gymnasium-robotics for D4RL/*) or pass --eval-env"
            ) from error
    elif is_ogbench_name(spec):
        from training.data.ogbench_files import make_task_env

        env = make_task_env(spec)
    else:
        try:
            env = gymnasium.make(spec)
        except gymnasium.error.Error as error:
            raise DatasetError(f"--eval-env {spec!r}: gymnasium cannot make it ({error})") from error
    if isinstance(getattr(env, "observation_space", None), gymnasium.spaces.Dict):
        if not observation_keys:
            raise DatasetError(
                f"{spec}: the env's observations are a Dict; the run names no observation keys"
            )
        env = FlatObservation(env, observation_keys)
    return env
