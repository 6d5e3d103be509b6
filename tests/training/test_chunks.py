"""Action chunks (--action-horizon H): the H-step backup, chunk sampling, agents, evaluation, CLI.

The backup is checked against values derived by hand on built trajectories; sampling against
the episode boundaries of a built dataset and of online episodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from training.agents import build_agent
from training.agents.common import backup_discount, critic_loss
from training.config import AgentConfig, NetworkConfig, TrainConfig
from training.evaluate import main as eval_main
from training.inference import load_serving_policy
from training.replay_buffer import ReplayBuffer, chunk_backup, chunk_starts
from training.train import main as train_main

GAMMA = 0.9
TINY = NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16))


# ---- the H-step backup, by hand -----------------------------------------------------------


@pytest.mark.parametrize(
    ("rewards", "masks", "expected_return", "expected_mask"),
    [
        # no success in the chunk: every reward counts, and the target bootstraps
        ([-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], -1 - 0.9 - 0.81, 1.0),
        # success at the chunk's last step: all three rewards, no bootstrap
        ([-1.0, -1.0, 0.0], [1.0, 1.0, 0.0], -1 - 0.9 + 0.0, 0.0),
        # success inside the chunk (step 1): the episode ends there, step 2's reward is ignored
        ([-1.0, 0.0, -1.0], [1.0, 0.0, 1.0], -1 + 0.0, 0.0),
        # success at the first step: only its reward
        ([0.0, -1.0, -1.0], [0.0, 1.0, 1.0], 0.0, 0.0),
    ],
)
def test_chunk_backup_matches_hand_derived_values(rewards, masks, expected_return, expected_mask):
    value, mask = chunk_backup(torch.tensor([rewards]), torch.tensor([masks]), GAMMA)
    assert value.item() == pytest.approx(expected_return, abs=1e-6)
    assert mask.item() == expected_mask


def test_chunk_backup_of_one_step_is_the_transition():
    rewards, masks = torch.tensor([[-2.0], [0.0]]), torch.tensor([[1.0], [0.0]])
    value, mask = chunk_backup(rewards, masks, GAMMA)
    assert value.tolist() == [-2.0, 0.0] and mask.tolist() == [1.0, 0.0]


def test_critic_target_discounts_the_bootstrap_by_gamma_to_the_h():
    """L = mean((Q - (R + gamma^H m Q'))^2) with R, m from the chunk backup."""
    torch.manual_seed(0)
    config = AgentConfig(discount=GAMMA, action_horizon=3, num_candidates=2)
    agent = build_agent("mfql", 4, 2, config, TINY, 100, seed=0)
    assert backup_discount(config) == pytest.approx(GAMMA**3)
    b = 8
    from training.agents.common import Batch, best_of_k

    batch = Batch(
        observations=torch.randn(b, 4),
        actions=torch.rand(b, 6) * 2 - 1,
        rewards=torch.randn(b),
        masks=(torch.rand(b) > 0.5).float(),
        next_observations=torch.randn(b, 4),
    )
    noise = torch.randn(2, b, 6)
    loss, _ = critic_loss(
        agent.critic, agent.target_critic, agent.policy, batch, noise, backup_discount(config)
    )
    with torch.no_grad():
        _, next_q, _ = best_of_k(agent.policy, agent.target_critic, batch.next_observations, noise)
        target = batch.rewards + GAMMA**3 * batch.masks * next_q
        expected = (agent.critic(batch.observations, batch.actions) - target).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- sampling never crosses an episode -----------------------------------------------------


@dataclass(frozen=True)
class BuiltDataset:
    """An OfflineDataset-like set of episodes whose rows encode (episode, step)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    masks: np.ndarray
    terminals: np.ndarray
    next_observations: np.ndarray

    @property
    def size(self) -> int:
        return len(self.observations)


def built_dataset(lengths: list[int]) -> BuiltDataset:
    episode = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)]).astype(np.float32)
    step = np.concatenate([np.arange(n) for n in lengths]).astype(np.float32)
    terminals = np.concatenate([np.eye(n)[-1] for n in lengths]).astype(np.float32)
    observations = np.stack([episode, step], axis=1)
    # action row = (episode, step): a sampled chunk shows which rows it took
    return BuiltDataset(
        observations=observations,
        actions=np.stack([episode, step], axis=1) / 10,
        rewards=-np.ones(len(step), dtype=np.float32),
        masks=np.ones(len(step), dtype=np.float32),
        terminals=terminals,
        next_observations=observations + np.array([0, 1], dtype=np.float32),
    )


def identity_buffer(dataset, horizon: int, capacity_extra: int = 0, seed: int = 0) -> ReplayBuffer:
    mean, std = np.zeros(2, np.float32), np.ones(2, np.float32)
    return ReplayBuffer(dataset, mean, std, capacity_extra, seed, horizon, GAMMA)


def test_chunk_starts_stay_inside_episodes():
    ends = torch.tensor([0, 0, 0, 1, 0, 0, 1, 0, 1], dtype=torch.bool)  # episodes of 4, 3, 2 rows
    assert chunk_starts(ends, 3).tolist() == [0, 1, 4]
    assert chunk_starts(ends, 2).tolist() == [0, 1, 2, 4, 5, 7]
    assert chunk_starts(ends, 1).tolist() == list(range(9))
    assert chunk_starts(ends, 5).tolist() == []


def test_sampled_chunks_are_consecutive_rows_of_one_episode():
    dataset = built_dataset([7, 3, 5, 4])
    buffer = identity_buffer(dataset, horizon=3)
    batch = buffer.sample(512)
    chunks = batch.actions.reshape(512, 3, 2) * 10
    episodes, steps = chunks[..., 0], chunks[..., 1]
    assert (episodes == episodes[:, :1]).all(), "a chunk crossed an episode boundary"
    assert torch.allclose(steps - steps[:, :1], torch.tensor([0.0, 1.0, 2.0]).expand(512, 3))
    # the observation is the chunk's first row, the next observation the one after its last
    assert torch.equal(batch.observations, chunks[:, 0])
    assert torch.equal(batch.next_observations[:, 1], steps[:, -1] + 1)
    assert torch.allclose(batch.rewards, torch.full((512,), -1 - GAMMA - GAMMA**2))
    # every start of every episode long enough is drawn
    starts = {(int(e), int(s)) for e, s in chunks[:, 0].tolist()}
    assert starts == {(e, s) for e, n in enumerate([7, 3, 5, 4]) for s in range(n - 2)}


def test_horizon_one_samples_exactly_as_before():
    """H = 1 takes the transition path: the same generator draws and rows as a plain index."""
    dataset = built_dataset([6, 4])
    buffer = identity_buffer(dataset, horizon=1, seed=3)
    batch = buffer.sample(16)
    index = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3 + 2))
    assert torch.equal(batch.actions, torch.as_tensor(dataset.actions)[index])


def test_episodes_shorter_than_the_horizon_are_refused():
    with pytest.raises(ValueError, match="need episodes at least that long"):
        identity_buffer(built_dataset([2, 3]), horizon=4)


def test_online_chunks_respect_online_episode_ends_and_survive_a_checkpoint():
    dataset = built_dataset([4])
    buffer = identity_buffer(dataset, horizon=2, capacity_extra=10)
    for episode, length in ((1, 3), (2, 2)):  # two online episodes, after the offline one
        for step in range(length):
            row = np.array([episode, step], np.float32)
            buffer.add(row, row / 10, -1.0, 1.0, row + [0, 1], episode_end=step == length - 1)
    starts = buffer.chunk_start_rows.tolist()
    assert starts == [0, 1, 2, 4, 5, 7]  # offline 0-2, online episode rows 4-6 and 7-8
    restored = identity_buffer(dataset, horizon=2, capacity_extra=10)
    restored.load_online_tensors(buffer.online_tensors())
    assert restored.chunk_start_rows.tolist() == starts


# ---- agents, evaluation and the CLI --------------------------------------------------------


@pytest.mark.parametrize("agent_name", ["mfql", "fql"])
def test_chunked_agents_act_on_whole_chunks(agent_name):
    config = AgentConfig(action_horizon=4, num_candidates=3)
    agent = build_agent(agent_name, 5, 2, config, TINY, 100, seed=0)
    assert agent.chunk_dim == 8 and agent.action_dim == 2
    buffer = identity_buffer(built_dataset([9, 6]), horizon=4)
    # built observations have 2 dims; give the agent matching ones
    agent = build_agent(agent_name, 2, 2, config, TINY, 100, seed=0)
    info = agent.update(buffer.sample(32), step=1)
    assert np.isfinite(info["critic/loss"])
    actions, q = agent.act(torch.zeros(3, 2), num_candidates=3)
    assert actions.shape == (3, 8) and q.shape == (3,)


def _train(tmp_path, data_dir, *extra: str) -> int:
    return train_main(
        [
            "--env",
            "cube-single-play-singletask-task2-v0",
            "--dataset-dir",
            str(data_dir),
            "--out",
            str(tmp_path / "run"),
            "--policy",
            "mlp",
            "--mlp-hidden",
            "16,16",
            "--critic-hidden",
            "16,16",
            "--eval-episodes",
            "1",
            "--eval-every",
            "0",
            "--threads",
            "1",
            *extra,
        ]
    )


def test_cli_trains_resumes_and_evaluates_a_chunked_run(tmp_path, two_episode_data_dir, capsys):
    """Offline then online steps with H = 3, interrupted and resumed; mfql-eval replans every 2."""
    flags = ["--steps", "6", "--online-steps", "8", "--action-horizon", "3", "--stop-after", "9"]
    assert _train(tmp_path, two_episode_data_dir, *flags) == 0
    assert _train(tmp_path, two_episode_data_dir, "--resume") == 0
    module, checkpoint = load_serving_policy(tmp_path / "run")
    assert checkpoint.step == 14 and module.action_horizon == 3
    assert checkpoint.config.agent_config.action_horizon == 3
    action, q, candidates = module(torch.zeros(2, 28), torch.randn(2, 4, 3, 5))
    assert action.shape == (2, 3, 5) and q.shape == (2,) and candidates.shape == (2, 4, 3, 5)
    capsys.readouterr()
    assert eval_main([str(tmp_path / "run"), "--episodes", "1", "--replan-every", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["action_horizon"] == 3 and report["replan_every"] == 2
    assert report["requests"] == 100  # 200 steps, one chunk request every 2


def test_an_interrupted_chunked_run_continues_exactly(tmp_path, two_episode_data_dir):
    """Stopped and resumed in the offline phase, a chunked run ends with the uninterrupted weights."""
    common = ("--steps", "6", "--action-horizon", "2", "--seed", "3")
    assert _train(tmp_path / "a", two_episode_data_dir, *common) == 0
    assert _train(tmp_path / "b", two_episode_data_dir, *common, "--stop-after", "3") == 0
    assert _train(tmp_path / "b", two_episode_data_dir, "--resume") == 0
    whole, _ = load_serving_policy(tmp_path / "a" / "run")
    resumed, _ = load_serving_policy(tmp_path / "b" / "run")
    for (name, x), (_, y) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_a_resume_mid_episode_ends_that_episode_for_chunk_sampling(tmp_path, two_episode_data_dir):
    """The env restarts on resume, so the interrupted episode's last row must end it."""
    from training.checkpoint import list_checkpoints, load_trainer_state

    flags = ["--steps", "2", "--online-steps", "8", "--action-horizon", "2", "--stop-after", "5"]
    assert _train(tmp_path, two_episode_data_dir, *flags) == 0
    assert _train(tmp_path, two_episode_data_dir, "--resume") == 0
    tensors, _ = load_trainer_state(list_checkpoints(tmp_path / "run")[-1])
    ends = tensors["buffer.episode_ends"]
    assert ends.shape == (8,) and bool(ends[2]), "online row 3 (step 5) ends the interrupted episode"
    # no sampleable chunk joins row 3 of the online phase to row 4
    assert chunk_starts(ends, 2).tolist() == [0, 1, 3, 4, 5, 6]


def test_bad_chunk_settings_are_refused(tmp_path, two_episode_data_dir, capsys):
    assert _train(tmp_path, two_episode_data_dir, "--steps", "2", "--action-horizon", "0") == 2
    assert "action_horizon must be >= 1" in capsys.readouterr().err
    flags = ["--steps", "2", "--action-horizon", "3", "--eval-replan-every", "4"]
    assert _train(tmp_path, two_episode_data_dir, *flags) == 2
    assert "between 1 and the action horizon 3" in capsys.readouterr().err
    with pytest.raises(ValueError, match="between 1 and the action horizon 1"):
        replace(TrainConfig(), eval_replan_every=2)
