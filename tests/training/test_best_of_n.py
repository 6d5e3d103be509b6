"""One-step best-of-N (training.agents.best_of_n): QC's expected-max target against hand-derived
values, its difference from the target-critic-only target, no gradient from Q into the actor, the
blocked candidate pass against `best_of_k`, the fused / compiled / multi-seed steps, and a tiny
CLI run that resumes, evaluates and exports."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from exporters.bundle import ONNX_FILE
from exporters.export import ExportOptions, export_bundle
from exporters.runtimes import OnnxRuntimePolicy
from tests.training.test_fused_step import agent_pair, assert_same_agents
from tests.training.test_multi_seed import build as build_seed_agent
from tests.training.test_precision_and_study_options import make_batch
from training.agents import build_agent
from training.agents.best_of_n import (
    best_candidate,
    candidate_scores,
    expected_max_critic_loss,
    expected_max_q,
)
from training.agents.common import Batch, best_of_k
from training.agents.fused_step import FusedUpdate
from training.config import NetworkConfig, resolve_agent_config
from training.evaluate import main as eval_main
from training.inference import load_serving_policy
from training.multi_seed import StackedSeeds
from training.networks import CriticEnsemble, build_policy
from training.train import main as train_main


class NoiseIsTheAction(nn.Module):
    """A one-step 'policy' whose raw action is its noise (plus a learnable offset, 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(1))

    def forward(self, observations, z, t):
        return z + self.offset


class LinearCritics(nn.Module):
    """E hand-set critics Q_e(s, a) = w_e . a + b_e, for actions [B, d] ([E, B]) or [K, B, d] ([E, K, B])."""

    def __init__(self, weights: list[list[float]], biases: list[float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weights))
        self.bias = nn.Parameter(torch.tensor(biases))

    def forward(self, observations, actions):
        return (actions @ self.weight.T).movedim(-1, 0) + self.bias.view(-1, *[1] * (actions.dim() - 1))


# K = 3 candidates for B = 2 states, d = 2; the policy returns the noise, clipped to [-1, 1].
NOISE = torch.tensor(
    [
        [[0.2, 0.4], [-0.5, -0.5]],
        [[0.9, -0.1], [0.0, 0.1]],
        [[1.5, 0.3], [-1.2, 0.8]],  # clipped: (1.0, 0.3) and (-1.0, 0.8)
    ]
)
ONLINE = LinearCritics([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])  # ensemble mean (a0 + a1) / 2
TARGET = LinearCritics([[2.0, 0.0], [0.0, -1.0]], [0.5, -0.5])  # ensemble mean a0 - a1 / 2


def test_expected_max_target_matches_hand_derived_values():
    # State 0: online means 0.3, 0.4, 0.65 pick candidate 2 = (1.0, 0.3); the target values it
    # (2.0 + 0.5 - 0.3 - 0.5) / 2 = 0.85. State 1: online means -0.5, 0.05, -0.1 pick candidate
    # 1 = (0.0, 0.1), valued (0.5 - 0.1 - 0.5) / 2 = -0.05.
    observations = torch.zeros(2, 3)
    next_q, online_q = expected_max_q(NoiseIsTheAction(), ONLINE, TARGET, observations, NOISE)
    torch.testing.assert_close(next_q, torch.tensor([0.85, -0.05]))
    torch.testing.assert_close(online_q, torch.tensor([0.65, 0.05]))
    batch = Batch(
        observations=observations,
        actions=torch.tensor([[0.5, 0.5], [-0.2, 0.4]]),
        rewards=torch.tensor([-1.0, 0.0]),
        masks=torch.tensor([1.0, 0.0]),  # state 1's chunk ends the episode: no bootstrap
        next_observations=observations,
    )
    loss, info = expected_max_critic_loss(ONLINE, TARGET, NoiseIsTheAction(), batch, NOISE, discount=0.9)
    y = [-1.0 + 0.9 * 0.85, 0.0]
    q = [[0.5, -0.2], [0.5, 0.4]]  # member 1 reads a0, member 2 reads a1
    expected = np.mean([(q[e][b] - y[b]) ** 2 for e in range(2) for b in range(2)])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert info["critic/next_q"].item() == pytest.approx(0.4)
    assert info["critic/next_q_online"].item() == pytest.approx(0.35)


def test_qc_target_differs_from_the_target_critic_only_one_where_the_critics_disagree():
    observations = torch.zeros(2, 3)
    qc, _ = expected_max_q(NoiseIsTheAction(), ONLINE, TARGET, observations, NOISE)
    # The target critic alone ranks state 0's candidates 0.0, 0.95, 0.85: it keeps its own
    # maximum, 0.95, where QC values the online critic's choice at 0.85. State 1: both pick (0, 0.1).
    _, target_only, _ = best_of_k(NoiseIsTheAction(), TARGET, observations, NOISE)
    torch.testing.assert_close(target_only, torch.tensor([0.95, -0.05]))
    torch.testing.assert_close(qc, torch.tensor([0.85, -0.05]))


def test_qc_target_equals_the_target_critic_only_one_when_online_and_target_agree():
    network = NetworkConfig(mlp_hidden=(32, 32), critic_hidden=(32, 32))
    torch.manual_seed(0)
    policy = _randomised(build_policy(5, 4, dataclasses.replace(network, policy="mlp")))
    critic = CriticEnsemble(5, 4, network)
    observations, noise = torch.randn(40, 5), torch.randn(16, 40, 4)
    qc, online_q = expected_max_q(policy, critic, copy.deepcopy(critic), observations, noise)
    _, target_only, _ = best_of_k(policy, critic, observations, noise)
    torch.testing.assert_close(qc, target_only, rtol=0, atol=1e-5)
    torch.testing.assert_close(online_q, qc, rtol=0, atol=1e-5)


def _randomised(policy: nn.Module) -> nn.Module:
    """Zero-initialised heads and modulations perturbed, so candidates differ."""
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return policy


@pytest.mark.parametrize("kind", ["mlp", "dit"])
@pytest.mark.parametrize(("b", "k"), [(100, 7), (600, 3), (1, 5)])
def test_blocked_candidate_pass_is_best_of_k_maths(kind, b, k):
    """The observation computed once per state, rows in blocks: same candidates, scores and choice."""
    torch.manual_seed(1)
    network = NetworkConfig(
        policy=kind,
        mlp_hidden=(32, 32),
        critic_hidden=(32, 32),
        dit_width=32,
        dit_depth=1,
        time_frequencies=16,
    )
    policy, critic = _randomised(build_policy(7, 6, network)), CriticEnsemble(7, 6, network)
    observations, noise = torch.randn(b, 7), torch.randn(k, b, 6)
    actions, q, candidates = best_of_k(policy, critic, observations, noise)
    blocked, scores = candidate_scores(policy, critic, observations, noise)
    torch.testing.assert_close(blocked, candidates, rtol=0, atol=1e-5)
    chosen, chosen_q = best_candidate(policy, critic, observations, noise)
    torch.testing.assert_close(chosen, actions, rtol=0, atol=1e-5)
    torch.testing.assert_close(chosen_q, q, rtol=0, atol=1e-5)
    assert scores.shape == (k, b)


def _bon_agent(seed: int = 0, **overrides):
    config = dataclasses.replace(
        resolve_agent_config("puzzle-3x3-play-singletask-task1-v0", agent="bon"),
        num_candidates=4,
        **overrides,
    )
    network = NetworkConfig(policy="mlp", mlp_hidden=(32, 32), critic_hidden=(32, 32))
    return build_agent("bon", 6, 3, config, network, 100, seed=seed)


def test_best_of_n_defaults_are_qcs():
    config = resolve_agent_config("puzzle-3x3-play-singletask-task1-v0", agent="bon")
    assert (config.num_candidates, config.action_horizon, config.discount) == (32, 5, 0.99)
    assert (config.actor_lr, config.actor_lr_schedule, config.critic_lr) == (3e-4, "constant", 3e-4)
    given = resolve_agent_config(
        "scene-play-singletask-task1-v0", agent="bon", num_candidates=8, action_horizon=1
    )
    assert (given.num_candidates, given.action_horizon) == (8, 1)


def test_no_gradient_from_q_reaches_the_actor():
    """The actor's gradient is the MFI loss's alone: changing both critics leaves it bit for bit."""
    agent = _bon_agent(action_horizon=2)
    batch = make_batch(action_dim=agent.chunk_dim, seed=3)
    noises, t = agent.update_noise(16)
    policy_parameters = list(agent.policy.parameters())

    def losses_and_actor_grads():
        c_loss, mfi_loss, _ = agent.step_losses(agent.nets(), batch, noises, t)
        return c_loss, torch.autograd.grad(c_loss + mfi_loss, policy_parameters)

    before, grads = losses_and_actor_grads()
    with torch.no_grad():
        for module in (agent.critic, agent.target_critic):
            for parameter in module.parameters():
                parameter.add_(0.5 * torch.randn_like(parameter))
    after, changed = losses_and_actor_grads()
    assert before.item() != pytest.approx(after.item())
    for a, b in zip(grads, changed, strict=True):
        assert torch.equal(a, b)
    c_loss, _, _ = agent.step_losses(agent.nets(), batch, noises, t)
    assert all(g is None for g in torch.autograd.grad(c_loss, policy_parameters, allow_unused=True))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"action_horizon": 2, "policy_ema_rate": 0.1, "mfi_draws": 2},
        {"renoise_time": 0.3, "renoise_target": True},
    ],
)
def test_fused_update_matches_the_eager_one(overrides):
    eager, fused = agent_pair("bon", num_candidates=4, **{"action_horizon": 1, **overrides})
    step_fn = FusedUpdate(fused, compile=False)
    for step in range(1, 5):
        batch = make_batch(action_dim=eager.chunk_dim, seed=step)
        expected, got = eager.update(batch, step), step_fn(batch, step)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert_same_agents(eager, fused)


@pytest.mark.slow
def test_compiled_update_matches_the_eager_one():
    eager, fused = agent_pair("bon", num_candidates=4, action_horizon=2)
    step_fn = FusedUpdate(fused, compile=True)
    for step in range(1, 4):
        batch = make_batch(action_dim=eager.chunk_dim, seed=step)
        expected, got = eager.update(batch, step), step_fn(batch, step)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert_same_agents(eager, fused, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("renoise", [{}, {"renoise_time": 0.3, "renoise_target": True}])
def test_each_seed_of_a_stacked_step_matches_its_single_seed_run(renoise):
    overrides = {"num_candidates": 4, "action_horizon": 2, **renoise}
    singles = [build_seed_agent("bon", seed, **overrides) for seed in (0, 1)]
    stacked_agents = [build_seed_agent("bon", seed, **overrides) for seed in (0, 1)]
    stacked = StackedSeeds(stacked_agents)
    for step in range(1, 5):
        batches = [make_batch(action_dim=6, seed=100 * seed + step) for seed in (0, 1)]
        expected = [agent.update(batch, step) for agent, batch in zip(singles, batches, strict=True)]
        for want, have in zip(expected, stacked(batches, step), strict=True):
            for key, value in want.items():
                assert have[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for single, agent in zip(singles, stacked_agents, strict=True):
        assert_same_agents(single, agent)


def _train(out, data_dir, *extra: str) -> int:
    return train_main(
        [
            "--env", "cube-single-play-singletask-task2-v0", "--dataset-dir", str(data_dir),
            "--out", str(out), "--agent", "bon", "--policy", "mlp", "--mlp-hidden", "16,16",
            "--critic-hidden", "16,16", "--batch-size", "32", "--steps", "6", "--eval-episodes", "0",
            "--threads", "1", "--seed", "2", *extra,
        ]
    )  # fmt: skip


def test_cli_trains_resumes_evaluates_and_exports_a_best_of_n_run(tmp_path, two_episode_data_dir, capsys):
    assert _train(tmp_path / "whole", two_episode_data_dir) == 0
    assert _train(tmp_path / "parts", two_episode_data_dir, "--stop-after", "3") == 0
    assert _train(tmp_path / "parts", two_episode_data_dir, "--resume") == 0
    whole, checkpoint = load_serving_policy(tmp_path / "whole")
    resumed, _ = load_serving_policy(tmp_path / "parts")
    for (name, x), (_, y) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    agent_config = checkpoint.config.agent_config
    assert checkpoint.config.agent == "bon" and (
        agent_config.num_candidates,
        agent_config.action_horizon,
    ) == (32, 5)

    capsys.readouterr()
    assert eval_main([str(tmp_path / "whole"), "--episodes", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_candidates"] == 32 and report["requests"] == 40  # 200 steps, chunks of 5

    result = export_bundle(tmp_path / "whole", ExportOptions(out=tmp_path / "bundle", formats=("onnx",)))
    assert result.metadata["agent"] == "bon" and result.metadata["default_num_candidates"] == 32
    assert result.metadata["action_horizon"] == 5
    observation = np.random.default_rng(0).normal(size=(3, whole.normalizer.mean.shape[0])).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((3, 32, *whole.noise_shape)).astype(np.float32)
    got = OnnxRuntimePolicy(result.bundle_dir / ONNX_FILE)(observation, noise)
    with torch.no_grad():
        action, q, _ = whole(torch.from_numpy(observation), torch.from_numpy(noise))
        # the graph scores with the ensemble mean of the critic the bundle carries
        mean_q = whole.critic(whole.normalizer(torch.from_numpy(observation)), action.flatten(1)).mean(dim=0)
    np.testing.assert_allclose(got["action"], action.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["q_value"], q.numpy(), rtol=0, atol=1e-5)
    torch.testing.assert_close(q, mean_q)


def test_q_term_options_are_refused_with_best_of_n(tmp_path, two_episode_data_dir, capsys):
    assert _train(tmp_path / "run", two_episode_data_dir, "--alpha", "10") == 2
    assert "--alpha: options of MFQL's Q term and alpha" in capsys.readouterr().err
