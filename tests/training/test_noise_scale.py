"""A sampling temperature for the candidates (`--noise-scale C`): the maths by hand, the
override chain (run -> resume -> mfql-eval / mfql-export), the evaluation check, the exported
graph against eager PyTorch, a second way of acting (`--also-eval noise=C`), and the critic's
target at the same scale (`--noise-scale-target`) in every agent's step."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import training.evaluate
from exporters.errors import ExportError
from exporters.export import ExportOptions, export_bundle
from exporters.half_precision import Float16ServingPolicy
from exporters.runtimes import OnnxRuntimePolicy
from tests.exporters.checkpoints import ENV_NAME, SMALL_MLP, CheckpointSpec, write_checkpoint
from tests.training.test_also_eval import _rows, _train
from tests.training.test_best_of_n import NoiseIsTheAction
from tests.training.test_precision_and_study_options import make_batch
from training.agents import build_agent
from training.agents.best_of_n import expected_max_q
from training.agents.common import backup_discount, best_of_k, td_loss
from training.checkpoint import load_policy_checkpoint
from training.config import Acting, ActingOverrides, AgentConfig, NetworkConfig, resolve_agent_config
from training.inference import ServingPolicy, load_serving_policy
from training.networks import ObservationNormalizer
from training.train import build_parser, config_from_args

# K = 2 candidates for B = 1 state, d = 2; the policy returns its noise; one critic, Q = a0 - 4 a1^2.
# Unscaled: (0.9, 0.4) -> 0.26 and (0.5, 0.1) -> 0.46, so candidate 1 wins. At C = 0.5:
# (0.45, 0.2) -> 0.29 and (0.25, 0.05) -> 0.24, so candidate 0 wins. C = 0: both (0, 0) -> 0.
NOISE = torch.tensor([[[0.9, 0.4], [0.5, 0.1]]])  # [B, K, d], as a ServingPolicy takes it


class QuadraticCritic(torch.nn.Module):
    def forward(self, observations, actions):
        return (actions[..., 0] - 4 * actions[..., 1] ** 2).unsqueeze(0)


def _serve(noise_scale: float) -> ServingPolicy:
    normalizer = ObservationNormalizer(torch.zeros(3), torch.ones(3))
    return ServingPolicy(
        normalizer, NoiseIsTheAction(), QuadraticCritic(), 2, acting=Acting(noise_scale=noise_scale)
    ).eval()


def test_the_candidates_come_from_scaled_noise_by_hand():
    with torch.no_grad():
        for scale, best, q in ((1.0, (0.5, 0.1), 0.46), (0.5, (0.45, 0.2), 0.29), (0.0, (0.0, 0.0), 0.0)):
            action, value, candidates = _serve(scale)(torch.zeros(1, 3), NOISE)
            torch.testing.assert_close(candidates, scale * NOISE)
            torch.testing.assert_close(action, torch.tensor([best]))
            torch.testing.assert_close(value, torch.tensor([q]))


def test_bad_scales_are_refused_everywhere():
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
            AgentConfig(noise_scale=bad)
        with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
            _serve(bad)
    with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
        config_from_args(build_parser().parse_args(["--noise-scale", "-1"]))


@pytest.mark.parametrize("agent", ["mfql", "fql", "bon"])
def test_the_training_flag_sets_how_every_agent_acts(agent):
    args = build_parser().parse_args(["--agent", agent, "--noise-scale", "0.5"])
    assert config_from_args(args).agent_config.noise_scale == 0.5
    assert config_from_args(build_parser().parse_args(["--agent", agent])).agent_config.noise_scale == 1.0


def test_a_run_acts_tempered_and_a_resume_or_another_evaluation_may_change_it(tmp_path, two_episode_data_dir):
    """The run's own evaluations act at its scale, `--also-eval noise=1` also unscaled on the same
    episodes (evaluations_also.csv names the scale), and a resumed run may set a new scale."""
    run = tmp_path / "run"
    assert _train(run, two_episode_data_dir, "--stop-after", "3", "--noise-scale", "0.5",
                  "--eval-every", "3", "--also-eval", "noise=1") == 0  # fmt: skip
    assert load_policy_checkpoint(run).config.agent_config.noise_scale == 0.5
    assert load_serving_policy(run)[0].noise_scale == 0.5
    assert load_serving_policy(run, ActingOverrides(noise_scale=1.0))[0].noise_scale == 1.0
    (also,) = _rows(run / "evaluations_also.csv")
    assert (also["variant"], float(also["noise_scale"])) == ("noise=1", 1.0)
    assert _train(run, two_episode_data_dir, "--resume", "--noise-scale", "0.25") == 0
    resumed = load_policy_checkpoint(run)
    assert resumed.step == 6 and resumed.config.agent_config.noise_scale == 0.25


@pytest.fixture
def pendulum_checkpoint(tmp_path):
    """An untrained MFQL checkpoint shaped for gymnasium's Pendulum (3 observations, 1 action)."""
    return write_checkpoint(tmp_path / "run", CheckpointSpec(SMALL_MLP, 3, 1, {}, seed=3))


def test_mfql_eval_records_the_scale_and_export_refuses_a_report_that_acted_otherwise(
    pendulum_checkpoint, tmp_path, capsys
):
    argv = [str(pendulum_checkpoint), "--env", "Pendulum-v1", "--episodes", "1", "--num-candidates", "4"]
    assert training.evaluate.main([*argv, "--noise-scale", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["noise_scale"] == 0.5
    (tmp_path / "half.json").write_text(json.dumps({**report, "env": ENV_NAME}))
    assert training.evaluate.main(argv) == 0
    assert "noise_scale" not in json.loads(capsys.readouterr().out)  # unscaled: the report as before
    assert training.evaluate.main([*argv, "--noise-scale", "-1"]) == 2
    assert "noise_scale must be a finite number >= 0" in capsys.readouterr().err

    with pytest.raises(ExportError, match="scaled the candidates' noise by 0.5; the bundle scales it by 1.0"):
        export_bundle(
            pendulum_checkpoint,
            ExportOptions(out=tmp_path / "plain", formats=("onnx",), evaluation=tmp_path / "half.json"),
        )
    assert not (tmp_path / "plain").exists()
    bundle = export_bundle(
        pendulum_checkpoint,
        ExportOptions(
            out=tmp_path / "half",
            formats=("onnx",),
            evaluation=tmp_path / "half.json",
            acting=ActingOverrides(noise_scale=0.5),
            num_candidates=4,
        ),
    )
    assert bundle.metadata["noise_scale"] == 0.5 and bundle.metadata["evaluation"]["episodes"] == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_bakes_the_scale_into_the_graph(tmp_path):
    checkpoint = write_checkpoint(
        tmp_path / "run", CheckpointSpec(SMALL_MLP, 9, 2, {}, seed=5, action_horizon=3)
    )
    plain = export_bundle(
        checkpoint, ExportOptions(out=tmp_path / "plain", formats=("onnx",), max_candidates=8)
    )
    half = export_bundle(
        checkpoint,
        ExportOptions(out=tmp_path / "half", max_candidates=8, acting=ActingOverrides(noise_scale=0.5)),
    )
    assert plain.metadata["noise_scale"] == 1.0 and half.metadata["noise_scale"] == 0.5
    assert half.parity["onnxruntime"].problems == [] and half.parity["torchscript"].problems == []

    rng = np.random.default_rng(0)
    observation = rng.normal(size=(16, 9)).astype(np.float32)
    noise = rng.normal(size=(16, 8, 3, 2)).astype(np.float32)
    got = OnnxRuntimePolicy(tmp_path / "half" / "policy.onnx")(observation, noise)
    # the tempered graph on noise e is the plain graph on noise 0.5 e
    same = OnnxRuntimePolicy(tmp_path / "plain" / "policy.onnx")(observation, 0.5 * noise)
    for name in ("action", "q_value", "candidates"):
        np.testing.assert_allclose(got[name], same[name], atol=1e-5)
    unscaled = OnnxRuntimePolicy(tmp_path / "plain" / "policy.onnx")(observation, noise)
    assert not np.allclose(got["candidates"], unscaled["candidates"], atol=1e-3)


def test_float16_keeps_the_scale():
    eager = _serve(0.5)
    half = Float16ServingPolicy(eager).eval()
    assert half.inner.noise_scale == 0.5
    with torch.no_grad():
        action, q, _ = half(torch.zeros(1, 3), NOISE)
    torch.testing.assert_close(action, torch.tensor([[0.45, 0.2]]), atol=1e-3, rtol=0)
    torch.testing.assert_close(q, torch.tensor([0.29]), atol=1e-2, rtol=0)


@pytest.mark.parametrize("agent", ["mfql", "fql", "bon"])
def test_the_target_draws_its_candidates_at_the_scale_in_every_agents_step(agent):
    """With --noise-scale-target each agent's critic loss is the TD loss to the target its own
    rule computes (bon: QC's expected max; mfql, fql: best of K by the target critic) over
    candidates from the scaled noise, computed apart; without it the scale is acting only."""
    network = NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16))
    config = dataclasses.replace(
        resolve_agent_config("puzzle-3x3-play-singletask-v0", agent=agent),
        num_candidates=4,
        action_horizon=1,
        noise_scale=0.5,
    )
    losses = {}
    for scaled_target in (False, True):
        torch.manual_seed(0)
        built = build_agent(
            agent, 6, 3, dataclasses.replace(config, noise_scale_target=scaled_target), network, 100, seed=0
        )
        with torch.no_grad():  # distinct online and target critics, so bon's pick and value differ,
            # and a policy whose output depends on its noise (its output layer starts at zero)
            for parameter in [*built.target_critic.parameters(), *built.nets()["policy"].parameters()]:
                parameter.add_(0.3 * torch.randn_like(parameter))
        batch = make_batch()
        noises, t = built.update_noise(batch.actions.shape[0])
        losses[scaled_target] = built.step_losses(built.nets(), batch, noises, t)[0].item()
        with torch.no_grad():
            policy, noise = built.nets()["policy"], noises[0] * (0.5 if scaled_target else 1.0)
            if agent == "bon":
                next_q, _ = expected_max_q(
                    policy, built.critic, built.target_critic, batch.next_observations, noise
                )
            else:
                _, next_q, _ = best_of_k(policy, built.target_critic, batch.next_observations, noise)
            target = batch.rewards + backup_discount(built.config) * batch.masks * next_q
            expected = td_loss(built.critic, batch, target)[0].item()
        assert losses[scaled_target] == pytest.approx(expected, rel=1e-5)
    assert losses[True] != pytest.approx(losses[False], rel=1e-4)


def test_a_scaled_target_needs_a_scale_and_its_resume_keeps_it(tmp_path, two_episode_data_dir, capsys):
    with pytest.raises(ValueError, match="set noise_scale \\(--noise-scale\\) to a factor other than 1"):
        config_from_args(build_parser().parse_args(["--agent", "bon", "--noise-scale-target"]))
    run = tmp_path / "run"
    assert (
        _train(run, two_episode_data_dir, "--stop-after", "3", "--noise-scale", "0.5", "--noise-scale-target")
        == 0
    )
    stored = load_policy_checkpoint(run).config.agent_config
    assert (stored.noise_scale, stored.noise_scale_target) == (0.5, True)
    capsys.readouterr()
    assert _train(run, two_episode_data_dir, "--resume", "--noise-scale", "0.7") == 2
    assert "trains its critic's target at noise scale 0.5 (--noise-scale-target); a resume keeps it" in (
        capsys.readouterr().err
    )
    assert load_policy_checkpoint(run).step == 3  # nothing trained, nothing lost
    assert _train(run, two_episode_data_dir, "--resume") == 0
    resumed = load_policy_checkpoint(run)
    assert resumed.step == 6 and resumed.config.agent_config.noise_scale_target
