"""Ranking candidates by the critic ensemble's minimum (`--critic-aggregate min`): the maths by
hand, the override chain (run -> mfql-eval / mfql-export), the evaluation check, export parity,
and the float16 graph (which must keep both the ranking and a run's action scaling)."""

from __future__ import annotations

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
from tests.training.test_also_eval import _train
from tests.training.test_best_of_n import LinearCritics, NoiseIsTheAction
from training.agents.common import best_of_k, ensemble_score
from training.checkpoint import load_policy_checkpoint
from training.config import Acting, ActingOverrides, AgentConfig
from training.inference import ServingPolicy, load_serving_policy
from training.networks import ObservationNormalizer
from training.train import build_parser, config_from_args

# K = 2 candidates for B = 1 state, d = 2; the policy returns its noise. Two critics, one per
# coordinate: candidate 0 = (0.9, -0.1) has mean 0.4 and min -0.1; candidate 1 = (0.3, 0.2)
# has mean 0.25 and min 0.2. The mean keeps candidate 0, the minimum candidate 1.
NOISE = torch.tensor([[[0.9, -0.1]], [[0.3, 0.2]]])
PER_COORDINATE = LinearCritics([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])


def test_min_ranks_by_the_weakest_member_by_hand():
    observations = torch.zeros(1, 3)
    actions, q, candidates = best_of_k(NoiseIsTheAction(), PER_COORDINATE, observations, NOISE)
    torch.testing.assert_close(actions, torch.tensor([[0.9, -0.1]]))
    torch.testing.assert_close(q, torch.tensor([0.4]))
    actions, q, same = best_of_k(NoiseIsTheAction(), PER_COORDINATE, observations, NOISE, aggregate="min")
    torch.testing.assert_close(actions, torch.tensor([[0.3, 0.2]]))
    torch.testing.assert_close(q, torch.tensor([0.2]))  # q is the aggregate the action won by
    torch.testing.assert_close(same, candidates)  # the candidates themselves do not change


def test_unknown_aggregates_are_refused_everywhere():
    with pytest.raises(ValueError, match="'mean' or 'min'"):
        ensemble_score(torch.zeros(2, 3), "max")
    with pytest.raises(ValueError, match="critic_aggregate must be one of mean, min; got 'max'"):
        AgentConfig(critic_aggregate="max")
    normalizer = ObservationNormalizer(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="critic_aggregate"):
        ServingPolicy(
            normalizer, NoiseIsTheAction(), PER_COORDINATE, 2, acting=Acting(critic_aggregate="median")
        )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--critic-aggregate", "max"])


@pytest.mark.parametrize("agent", ["mfql", "fql", "bon"])
def test_the_training_flag_sets_how_every_agent_acts(agent):
    args = build_parser().parse_args(["--agent", agent, "--critic-aggregate", "min"])
    assert config_from_args(args).agent_config.critic_aggregate == "min"
    assert (
        config_from_args(build_parser().parse_args(["--agent", agent])).agent_config.critic_aggregate
        == "mean"
    )


def test_a_resumed_run_may_rank_anew(tmp_path, two_episode_data_dir):
    run = tmp_path / "run"
    assert _train(run, two_episode_data_dir, "--stop-after", "3") == 0
    assert load_policy_checkpoint(run).config.agent_config.critic_aggregate == "mean"
    assert _train(run, two_episode_data_dir, "--resume", "--critic-aggregate", "min") == 0
    resumed = load_policy_checkpoint(run)
    assert resumed.step == 6 and resumed.config.agent_config.critic_aggregate == "min"
    assert load_serving_policy(run)[0].critic_aggregate == "min"


def test_a_runs_own_ranking_acts_unless_overridden(tmp_path):
    path = write_checkpoint(tmp_path / "run", CheckpointSpec(SMALL_MLP, 7, 3, {}, critic_aggregate="min"))
    assert load_serving_policy(path)[0].critic_aggregate == "min"
    assert load_serving_policy(path, ActingOverrides(critic_aggregate="mean"))[0].critic_aggregate == "mean"
    plain = write_checkpoint(tmp_path / "plain", CheckpointSpec(SMALL_MLP, 7, 3, {}))
    assert load_serving_policy(plain)[0].critic_aggregate == "mean"


@pytest.fixture
def pendulum_checkpoint(tmp_path):
    """An untrained MFQL checkpoint shaped for gymnasium's Pendulum (3 observations, 1 action):
    a real env whose 200-step episode takes milliseconds."""
    return write_checkpoint(tmp_path / "run", CheckpointSpec(SMALL_MLP, 3, 1, {}, seed=3))


def test_mfql_eval_records_the_ranking_and_export_refuses_a_report_that_ranked_otherwise(
    pendulum_checkpoint, tmp_path, capsys
):
    argv = [str(pendulum_checkpoint), "--env", "Pendulum-v1", "--episodes", "1", "--num-candidates", "4"]
    assert training.evaluate.main([*argv, "--critic-aggregate", "min"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["critic_aggregate"] == "min" and report["episodes"] == 1
    # the checkpoint names cube-single as its env; the report stands for one rolled out there
    (tmp_path / "min.json").write_text(json.dumps({**report, "env": ENV_NAME}))
    assert training.evaluate.main(argv) == 0
    assert "critic_aggregate" not in json.loads(capsys.readouterr().out)  # the paper's mean: as before

    with pytest.raises(
        ExportError, match="ranked candidates by the critic's min Q; the bundle ranks by its mean"
    ):
        export_bundle(
            pendulum_checkpoint,
            ExportOptions(out=tmp_path / "mean", formats=("onnx",), evaluation=tmp_path / "min.json"),
        )
    assert not (tmp_path / "mean").exists()
    bundle = export_bundle(
        pendulum_checkpoint,
        ExportOptions(
            out=tmp_path / "min",
            formats=("onnx",),
            evaluation=tmp_path / "min.json",
            acting=ActingOverrides(critic_aggregate="min"),
            num_candidates=4,  # as evaluated
        ),
    )
    assert bundle.metadata["critic_aggregate"] == "min"
    assert bundle.metadata["evaluation"]["episodes"] == 1 and bundle.metadata["default_num_candidates"] == 4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_bakes_the_minimum_into_the_graph(tmp_path):
    checkpoint = write_checkpoint(
        tmp_path / "run", CheckpointSpec(SMALL_MLP, 9, 2, {}, seed=5, action_horizon=3)
    )
    mean = export_bundle(
        checkpoint, ExportOptions(out=tmp_path / "mean", formats=("onnx",), max_candidates=8)
    )
    low = export_bundle(
        checkpoint,
        ExportOptions(out=tmp_path / "min", max_candidates=8, acting=ActingOverrides(critic_aggregate="min")),
    )
    assert mean.metadata["critic_aggregate"] == "mean" and low.metadata["critic_aggregate"] == "min"
    # export_bundle refuses a graph that disagrees with eager PyTorch; both runtimes were compared
    assert low.parity["onnxruntime"].problems == [] and low.parity["torchscript"].problems == []

    rng = np.random.default_rng(0)
    observation = rng.normal(size=(16, 9)).astype(np.float32)
    noise = rng.normal(size=(16, 8, 3, 2)).astype(np.float32)
    eager, _ = load_serving_policy(checkpoint, ActingOverrides(critic_aggregate="min"))
    expected = eager(torch.from_numpy(observation), torch.from_numpy(noise))
    got = OnnxRuntimePolicy(tmp_path / "min" / "policy.onnx")(observation, noise)
    np.testing.assert_allclose(got["q_value"], expected[1].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["action"], expected[0].numpy(), atol=1e-5)
    by_mean = OnnxRuntimePolicy(tmp_path / "mean" / "policy.onnx")(observation, noise)
    np.testing.assert_allclose(by_mean["candidates"], got["candidates"], atol=1e-5)  # same candidates
    # max_k min_e Q <= max_k mean_e Q, and an untrained ensemble disagrees, so strictly on some rows
    assert (got["q_value"] <= by_mean["q_value"] + 1e-6).all() and (got["q_value"] < by_mean["q_value"]).any()


def test_float16_keeps_the_ranking_and_the_runs_action_scaling():
    torch.manual_seed(0)
    normalizer = ObservationNormalizer(torch.zeros(3), torch.ones(3))
    bounds = ([0.0, -2.0], [10.0, 2.0])
    eager = ServingPolicy(
        normalizer,
        NoiseIsTheAction(),
        PER_COORDINATE,
        2,
        action_bounds=bounds,
        acting=Acting(critic_aggregate="min"),
    ).eval()
    half = Float16ServingPolicy(eager).eval()
    assert half.inner.critic_aggregate == "min" and half.inner.scaled
    with torch.no_grad():
        action, q, candidates = half(torch.zeros(1, 3), NOISE.transpose(0, 1))
        expected = eager(torch.zeros(1, 3), NOISE.transpose(0, 1))
    # candidate 1 = (0.3, 0.2) in [-1, 1] is (6.5, 0.4) in the data's units
    torch.testing.assert_close(action, torch.tensor([[6.5, 0.4]]), atol=1e-2, rtol=0)
    torch.testing.assert_close(action, expected[0], atol=1e-2, rtol=0)
    torch.testing.assert_close(q, expected[1], atol=1e-2, rtol=0)
    torch.testing.assert_close(candidates, expected[2], atol=1e-2, rtol=0)
