"""Success counting in mfql-eval's loop: OGBench's own oracle solves cube-single through it."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import torch

import training.data.ogbench_files
from training.evaluate import evaluate_policy
from training.rollout_recording import read_requests

TASK = "cube-single-play-singletask-task2-v0"
HORIZON = 200  # cube-single's episode length


class OracleInTheLoop(gymnasium.Wrapper):
    """The evaluation env, plus OGBench's Markov cube oracle reading the env's privileged state.

    The singletask env hides the target from `info` (only data-collection mode shows it), so
    the wrapper adds the target's pose from the env's goal marker. Episodes whose index is in
    `idle_episodes` hold the arm still instead, so they cannot succeed.
    """

    def __init__(self, env: gymnasium.Env, idle_episodes: set[int]) -> None:
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

        super().__init__(env)
        self.oracle = CubeMarkovOracle(env=env, min_norm=0.0)
        self.idle_episodes = idle_episodes
        self.seeds, self.lengths, self.returns, self.successes = [], [], [], []
        self.observation, self.info = None, None

    def _privileged(self, info: dict) -> dict:
        from ogbench.manipspace import lie

        env = self.env.unwrapped
        mocap = env._cube_target_mocap_ids[0]
        yaw = lie.SO3(wxyz=env._data.mocap_quat[mocap]).compute_yaw_radians()
        return {
            **info,
            "privileged/target_block": 0,
            "privileged/target_block_pos": env._data.mocap_pos[mocap].copy(),
            "privileged/target_block_yaw": np.array([yaw]),
        }

    def reset(self, *, seed=None, options=None):
        self.observation, self.info = self.env.reset(seed=seed, options=options)
        np.random.seed(seed)  # the oracle draws its final arm pose from numpy's global generator
        self.oracle.reset(self.observation, self._privileged(self.info))
        self.seeds.append(seed)
        self.lengths.append(0)
        self.returns.append(0.0)
        return self.observation, self.info

    def step(self, action):
        self.observation, reward, terminated, truncated, self.info = self.env.step(action)
        self.lengths[-1] += 1
        self.returns[-1] += float(reward)
        if terminated or truncated:
            self.successes.append(float(self.info["success"]))
        return self.observation, reward, terminated, truncated, self.info

    def next_action(self) -> np.ndarray:
        if len(self.seeds) - 1 in self.idle_episodes:
            return np.zeros(self.action_space.shape)
        return np.clip(self.oracle.select_action(self.observation, self._privileged(self.info)), -1, 1)


class ScriptedPolicy:
    """Stands where mfql-eval's ServingPolicy stands: (observation, noise) -> (action, q, candidates)."""

    def __init__(self, env: OracleInTheLoop) -> None:
        self.env = env
        self.action_dim = env.action_space.shape[0]
        self.action_horizon = 1
        self.noise_shape = (self.action_dim,)

    def __call__(self, observation: torch.Tensor, noise: torch.Tensor):
        assert observation.shape == (1, self.env.observation_space.shape[0])
        np.testing.assert_allclose(observation[0].numpy(), self.env.observation, rtol=1e-6, atol=1e-6)
        action = torch.as_tensor(self.env.next_action(), dtype=torch.float32)[None]
        return action, torch.zeros(1), action[:, None].expand(1, noise.shape[1], -1)


def test_evaluation_counts_the_successes_of_a_scripted_policy(monkeypatch):
    env = OracleInTheLoop(training.data.ogbench_files.make_task_env(TASK), idle_episodes={1, 2})
    names = []
    monkeypatch.setattr(training.data.ogbench_files, "make_task_env", lambda name: names.append(name) or env)
    result = evaluate_policy(ScriptedPolicy(env), TASK, 4, 3, seed=11, progress=False)
    assert names == [TASK] and env.seeds == [11, 12, 13, 14]
    assert env.successes == [1.0, 0.0, 0.0, 1.0], "the oracle solves task2; an idle arm cannot"
    assert env.lengths[1] == env.lengths[2] == HORIZON and max(env.lengths[0], env.lengths[3]) < HORIZON
    assert result["success_rate"] == 0.5
    assert result["success_rate_stderr"] == pytest.approx(np.std([1, 0, 0, 1], ddof=1) / 2)
    assert result["mean_episode_length"] == pytest.approx(np.mean(env.lengths))
    assert result["mean_return"] == pytest.approx(np.mean(env.returns))
    assert result["episodes"] == 4 and result["num_candidates"] == 3


def test_a_recorded_evaluation_writes_every_request_and_what_it_gave(monkeypatch, tmp_path):
    env = OracleInTheLoop(training.data.ogbench_files.make_task_env(TASK), idle_episodes={1})
    monkeypatch.setattr(training.data.ogbench_files, "make_task_env", lambda name: env)
    evaluate_policy(ScriptedPolicy(env), TASK, 2, 3, seed=7, progress=False, record_dir=tmp_path / "rec")
    files = sorted((tmp_path / "rec").iterdir())
    assert [path.name for path in files] == ["episode_000000.jsonl", "episode_000001.jsonl"]
    for episode, path in enumerate(files):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == env.lengths[episode]  # one action per request (H = 1)
        assert [row["frame_index"] for row in rows] == list(range(len(rows)))
        assert {(row["episode_index"], row["seed"], row["num_candidates"]) for row in rows} == {
            (episode, 7 + episode, 3)
        }
        assert all(row["executed"] == 1 for row in rows) and rows[-1]["next.done"]
        assert not any(row["next.done"] for row in rows[:-1])
        assert sum(row["next.reward"] for row in rows) == pytest.approx(env.returns[episode])
        assert rows[-1]["next.success"] == env.successes[episode]
        assert np.asarray(rows[0]["observation.state"]).shape == env.observation_space.shape
    observations, actions = read_requests(tmp_path / "rec")
    assert observations.shape == (sum(env.lengths), env.observation_space.shape[0]) and actions.shape[1] == 5
    with pytest.raises(ValueError, match="already holds recorded episodes"):
        evaluate_policy(ScriptedPolicy(env), TASK, 1, 3, seed=7, progress=False, record_dir=tmp_path / "rec")
    assert sorted((tmp_path / "rec").iterdir()) == files
