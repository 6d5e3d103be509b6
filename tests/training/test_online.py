"""The offline-to-online phase (`--online-steps`): what interaction adds to the replay buffer, and resume.

A scripted env stands in for the task env, so every transition, termination and truncation
is known; the datasets, agents, buffer and checkpoints are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import training.data.ogbench_files
from training.checkpoint import list_checkpoints, load_trainer_state
from training.config import NetworkConfig, TrainConfig, resolve_agent_config
from training.train import Trainer

TASK = "cube-single-play-singletask-task2-v0"
OBS_DIM, ACTION_DIM = 28, 5
OFFLINE, ONLINE = 4, 12
# Episode k of the scripted env lasts EPISODES[k][0] steps and then ends terminated (True)
# or only truncated (False): the mask must be 1 - terminated, not 1 - done.
EPISODES = [(3, True), (4, False), (3, True), (50, False)]


class ScriptedEpisodes:
    """reset(seed) / step(action) with observations that say which episode and step they are.

    Observations stay near the dataset's (`mean`, `std`), so the policy's actions do not saturate.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = mean, std
        self.resets: list[int] = []
        self.transitions: list[dict] = []
        self.t = 0

    def _observation(self) -> np.ndarray:
        pattern = np.sin(np.arange(OBS_DIM) + len(self.resets)) + 0.1 * self.t
        return (self.mean + self.std * pattern).astype(np.float32)

    def reset(self, seed=None):
        self.resets.append(seed)
        self.t = 0
        return self._observation(), {}

    def step(self, action):
        before = self._observation()
        self.t += 1
        length, ends_in_success = EPISODES[len(self.resets) - 1]
        terminated = ends_in_success and self.t == length
        truncated = not ends_in_success and self.t == length
        reward = 0.0 if terminated else -1.0
        after = self._observation()
        self.transitions.append(
            {
                "observation": before,
                "action": np.array(action, copy=True),
                "reward": reward,
                "terminated": terminated,
                "truncated": truncated,
                "next_observation": after,
            }
        )
        return after, reward, terminated, truncated, {"success": float(terminated)}

    def close(self) -> None:
        pass


@pytest.fixture
def envs(monkeypatch, two_episode_data_dir) -> list[ScriptedEpisodes]:
    with np.load(two_episode_data_dir / "cube-single-play-v0.npz") as raw:
        mean, std = raw["observations"].mean(0), raw["observations"].std(0)
    made: list[ScriptedEpisodes] = []

    def make_task_env(env_name):
        assert env_name == TASK
        made.append(ScriptedEpisodes(mean, std))
        return made[-1]

    monkeypatch.setattr(training.data.ogbench_files, "make_task_env", make_task_env)
    return made


def _config(data_dir: Path, out: Path, agent: str = "mfql") -> TrainConfig:
    return TrainConfig(
        env_name=TASK,
        dataset_dir=str(data_dir),
        out_dir=str(out),
        agent=agent,
        seed=3,
        offline_steps=OFFLINE,
        online_steps=ONLINE,
        batch_size=16,
        log_every=4,
        eval_episodes=0,
        checkpoint_every=1000,
        agent_config=resolve_agent_config(TASK, agent=agent, num_candidates=2),
        network=NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16)),
    )


def _online_rows(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {key.removeprefix("buffer."): value for key, value in trainer.buffer.online_tensors().items()}


def _assert_rows_are_the_transitions(trainer: Trainer, transitions: list[dict]) -> None:
    rows = _online_rows(trainer)
    assert rows["rewards"].shape[0] == len(transitions)
    normalize = trainer.buffer.normalize
    for i, step in enumerate(transitions):
        observation = normalize(torch.as_tensor(step["observation"]))
        next_observation = normalize(torch.as_tensor(step["next_observation"]))
        assert torch.allclose(rows["observations"][i], observation), i
        assert torch.allclose(rows["next_observations"][i], next_observation), i
        assert torch.equal(rows["actions"][i], torch.as_tensor(step["action"], dtype=torch.float32)), i
        assert rows["rewards"][i] == step["reward"], i
        assert rows["masks"][i] == 1.0 - float(step["terminated"]), i


def test_online_steps_add_one_env_transition_each_with_mask_one_minus_terminated(
    two_episode_data_dir, tmp_path, envs
):
    trainer = Trainer(_config(two_episode_data_dir, tmp_path / "run"), None)
    offline_rows = trainer.buffer.size
    trainer.run()
    (env,) = envs
    assert trainer.step == OFFLINE + ONLINE and trainer.buffer.size == offline_rows + ONLINE
    assert len(env.transitions) == ONLINE
    _assert_rows_are_the_transitions(trainer, env.transitions)
    masks = _online_rows(trainer)["masks"].tolist()
    assert masks == [1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1], "0 after a termination only, not a truncation"
    # Interaction starts after the offline steps; each episode end resets with seed + step.
    assert env.resets == [3 + OFFLINE + 1, 3 + 7, 3 + 11, 3 + 14]
    actions = torch.as_tensor(np.stack([step["action"] for step in env.transitions]))
    assert actions.shape == (ONLINE, ACTION_DIM) and actions.abs().max() <= 1.0
    assert len(torch.unique(actions, dim=0)) == ONLINE, "a fresh policy sample every step"
    # A finished run's checkpoint carries every online transition.
    tensors, _ = load_trainer_state(list_checkpoints(tmp_path / "run")[-1])
    assert torch.equal(tensors["buffer.masks"], _online_rows(trainer)["masks"])


@pytest.mark.parametrize("agent", ["mfql", "fql"])
def test_a_run_resumed_mid_online_phase_keeps_its_transitions_and_continues(
    two_episode_data_dir, tmp_path, envs, agent
):
    config = _config(two_episode_data_dir, tmp_path / "run", agent)
    first = Trainer(config, None)
    offline_rows = first.buffer.size
    first.run(stop_after=OFFLINE + 6)
    (checkpoint,) = list_checkpoints(tmp_path / "run")
    assert checkpoint.name.endswith(f"{OFFLINE + 6:09d}")

    resumed = Trainer(config, checkpoint)
    assert resumed.step == OFFLINE + 6 and resumed.buffer.size == offline_rows + 6
    _assert_rows_are_the_transitions(resumed, envs[0].transitions)
    assert torch.equal(resumed.buffer.generator.get_state(), first.buffer.generator.get_state())
    assert torch.equal(resumed.agent.generator.get_state(), first.agent.generator.get_state())
    resumed.run()
    assert resumed.step == OFFLINE + ONLINE and resumed.buffer.size == offline_rows + ONLINE
    # The env's state is not checkpointed: interaction resumes with a new episode (seed + step).
    second_env = envs[1]
    assert second_env.resets[0] == 3 + OFFLINE + 7
    _assert_rows_are_the_transitions(resumed, envs[0].transitions + second_env.transitions)
    tensors, _ = load_trainer_state(list_checkpoints(tmp_path / "run")[-1])
    assert tensors["buffer.rewards"].shape[0] == ONLINE
