"""One-step best-of-N from a distilled BC flow (training.agents.distilled_best_of_n): its critic
target and actor loss against hand-derived values on a built batch, no gradient from Q into the
one-step network or the flow, the K-candidate pass of a one-step network against `best_of_k`, the
fused step (stacked seeds: tests/training/test_multi_seed.py), and a tiny CLI run that resumes,
evaluates and exports."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from exporters.bundle import ONNX_FILE
from exporters.export import ExportOptions, export_bundle
from exporters.runtimes import OnnxRuntimePolicy
from tests.training.test_best_of_n import NOISE, ONLINE, TARGET, NoiseIsTheAction
from tests.training.test_fused_step import agent_pair, assert_same_agents
from tests.training.test_precision_and_study_options import make_batch
from training.agents import build_agent
from training.agents.best_of_n import candidate_scores
from training.agents.common import Batch, best_of_k
from training.agents.fused_step import FusedUpdate
from training.config import NetworkConfig, resolve_agent_config
from training.evaluate import main as eval_main
from training.inference import load_serving_policy
from training.networks import CriticEnsemble, OneStepMLPPolicy
from training.train import main as train_main

TASK = "puzzle-3x3-play-singletask-task4-v0"


class ConstantVelocity(nn.Module):
    """A BC flow whose velocity is c everywhere: its Euler sample from e is e + c in any number of steps."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c))

    def forward(self, observations, x, t):
        return self.c.expand_as(x)


class OneStepNoiseIsTheAction(NoiseIsTheAction):
    """The same stub in a one-step network's signature mu(s, z), t optional."""

    def forward(self, observations, z, t=None):
        return z + self.offset


def _agent(**overrides):
    config = dataclasses.replace(resolve_agent_config(TASK, agent="bon-distill"), **overrides)
    network = NetworkConfig(policy="mlp", mlp_hidden=(32, 32), critic_hidden=(32, 32))
    return build_agent("bon-distill", 3, 2, config, network, 100, seed=0)


def test_defaults_are_qcs_best_of_n_on_fqls_networks():
    config = resolve_agent_config(TASK, agent="bon-distill")
    assert (config.num_candidates, config.action_horizon, config.discount) == (32, 5, 0.99)
    assert (config.actor_lr, config.critic_lr, config.flow_steps) == (3e-4, 3e-4, 10)
    agent = _agent()
    assert isinstance(agent.policy, OneStepMLPPolicy) and set(agent.modules()) == {
        "policy", "bc_flow", "critic", "target_critic"
    }  # fmt: skip


def test_critic_target_and_actor_loss_match_hand_derived_values():
    """On a built batch: the critic's target is QC's expected max over the K candidates (the
    online critic picks, the target critic values), and the actor loss is flow matching plus the
    distillation onto the flow's sample, with no Q term."""
    agent = _agent(action_horizon=1, discount=0.9)
    observations = torch.zeros(2, 3)
    batch = Batch(
        observations=observations,
        actions=torch.tensor([[0.5, 0.5], [-0.2, 0.4]]),
        rewards=torch.tensor([-1.0, 0.0]),
        masks=torch.tensor([1.0, 0.0]),
        next_observations=observations,
    )
    flow_noise = torch.tensor([[0.1, -0.3], [0.7, 0.2]])
    policy_noise = torch.tensor([[0.2, 0.6], [-0.9, 0.1]])
    t = torch.tensor([[0.25], [0.5]])
    nets = {
        "bc_flow": ConstantVelocity(0.5),
        "policy": OneStepNoiseIsTheAction(),
        "critic": ONLINE,
        "target_critic": TARGET,
    }
    c_loss, a_loss, info = agent.step_losses(nets, batch, (NOISE, flow_noise, policy_noise), t)
    # test_best_of_n derives the targets: y = (-1 + 0.9 * 0.85, 0) on these K = 3 candidates
    y = [-1.0 + 0.9 * 0.85, 0.0]
    q = [[0.5, -0.2], [0.5, 0.4]]
    assert c_loss.item() == pytest.approx(
        np.mean([(q[e][b] - y[b]) ** 2 for e in range(2) for b in range(2)])
    )
    # flow matching: (0.5 - (a - e))^2; distillation: the policy returns e, the flow's sample clip(e + 0.5)
    velocity_target = batch.actions - flow_noise
    bc = ((0.5 - velocity_target) ** 2).mean().item()
    distill = ((policy_noise - (policy_noise + 0.5).clamp(-1, 1)) ** 2).mean().item()
    assert info["bc_flow/loss"].item() == pytest.approx(bc)
    assert info["actor/distill_loss"].item() == pytest.approx(distill)
    assert a_loss.item() == pytest.approx(bc + distill)
    assert "actor/q_loss" not in info


def test_no_gradient_from_q_reaches_the_one_step_network_or_the_flow():
    agent = _agent(action_horizon=2, num_candidates=4)
    batch = make_batch(obs_dim=3, action_dim=agent.chunk_dim, seed=3)
    noises, t = agent.update_noise(16)
    actor_parameters = [*agent.policy.parameters(), *agent.bc_flow.parameters()]

    def losses_and_actor_grads():
        c_loss, a_loss, _ = agent.step_losses(agent.nets(), batch, noises, t)
        return c_loss, torch.autograd.grad(c_loss + a_loss, actor_parameters)

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
    assert all(g is None for g in torch.autograd.grad(c_loss, actor_parameters, allow_unused=True))


@pytest.mark.parametrize(("b", "k"), [(100, 7), (600, 3)])
def test_one_step_network_scores_k_candidates_as_best_of_k(b, k):
    """A one-step network given [K, B, d] noise (the target's candidates) computes what it does row by row."""
    torch.manual_seed(2)
    network = NetworkConfig(mlp_hidden=(32, 32), critic_hidden=(32, 32))
    policy, critic = OneStepMLPPolicy(7, 6, network), CriticEnsemble(7, 6, network)
    observations, noise = torch.randn(b, 7), torch.randn(k, b, 6)
    _, _, candidates = best_of_k(policy, critic, observations, noise)
    blocked, _ = candidate_scores(policy, critic, observations, noise)
    torch.testing.assert_close(blocked, candidates, rtol=0, atol=1e-5)


def test_fused_update_matches_the_eager_one():
    eager, fused = agent_pair("bon-distill", num_candidates=4, action_horizon=2)
    step_fn = FusedUpdate(fused, compile=False)
    for step in range(1, 5):
        batch = make_batch(action_dim=eager.chunk_dim, seed=step)
        expected, got = eager.update(batch, step), step_fn(batch, step)
        assert set(got) == set(expected) and "alpha" not in got
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert_same_agents(eager, fused)


def _train(out, data_dir, *extra: str) -> int:
    return train_main(
        [
            "--env", "cube-single-play-singletask-task2-v0", "--dataset-dir", str(data_dir),
            "--out", str(out), "--agent", "bon-distill", "--mlp-hidden", "16,16",
            "--critic-hidden", "16,16", "--batch-size", "32", "--steps", "6", "--eval-episodes", "0",
            "--threads", "1", "--seed", "2", *extra,
        ]
    )  # fmt: skip


def test_cli_trains_resumes_evaluates_and_exports_a_distilled_best_of_n_run(
    tmp_path, two_episode_data_dir, capsys
):
    assert _train(tmp_path / "whole", two_episode_data_dir) == 0
    assert _train(tmp_path / "parts", two_episode_data_dir, "--stop-after", "3") == 0
    assert _train(tmp_path / "parts", two_episode_data_dir, "--resume") == 0
    whole, checkpoint = load_serving_policy(tmp_path / "whole")
    resumed, _ = load_serving_policy(tmp_path / "parts")
    for (name, x), (_, y) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert checkpoint.config.agent == "bon-distill" and "bc_flow.net.0.weight" in checkpoint.model
    capsys.readouterr()
    assert eval_main([str(tmp_path / "whole"), "--episodes", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_candidates"] == 32 and report["requests"] == 40  # 200 steps, chunks of 5

    result = export_bundle(tmp_path / "whole", ExportOptions(out=tmp_path / "bundle", formats=("onnx",)))
    assert result.metadata["agent"] == "bon-distill" and result.metadata["default_num_candidates"] == 32
    observation = np.random.default_rng(0).normal(size=(3, whole.normalizer.mean.shape[0])).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((3, 32, *whole.noise_shape)).astype(np.float32)
    got = OnnxRuntimePolicy(result.bundle_dir / ONNX_FILE)(observation, noise)
    with torch.no_grad():
        action, q, _ = whole(torch.from_numpy(observation), torch.from_numpy(noise))
    np.testing.assert_allclose(got["action"], action.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["q_value"], q.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--alpha", "10"], "--alpha: options of MeanFlow losses or of a Q term"),
        (["--renoise-time", "0.3"], "--renoise-time: options of MeanFlow losses"),
    ],
)
def test_options_it_does_not_read_are_refused(tmp_path, two_episode_data_dir, capsys, flag, message):
    assert _train(tmp_path / "run", two_episode_data_dir, *flag) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
