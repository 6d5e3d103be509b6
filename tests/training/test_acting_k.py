"""A run whose critic target uses one K and whose actions use another (`--eval-num-candidates`)
acts with the latter everywhere: training evaluations, `mfql-eval` and the exported bundle."""

from __future__ import annotations

import json

import pytest

import training.evaluate
from exporters.export import ExportOptions, export_bundle
from tests.exporters.checkpoints import SMALL_MLP, CheckpointSpec, write_checkpoint
from training.config import AgentConfig, TrainConfig


def test_acting_k_is_the_evaluation_k_when_the_run_set_one():
    assert TrainConfig(agent_config=AgentConfig(num_candidates=1)).acting_num_candidates == 1
    config = TrainConfig(agent_config=AgentConfig(num_candidates=1), eval_num_candidates=5)
    assert config.acting_num_candidates == 5


@pytest.fixture
def target_k1_acting_k3(tmp_path):
    # the agent's K (critic target) is AgentConfig's default 5; the run acts with 3
    spec = CheckpointSpec(SMALL_MLP, obs_dim=6, action_dim=2, metrics={}, eval_num_candidates=3)
    return write_checkpoint(tmp_path / "run", spec)


def test_mfql_eval_and_export_default_to_the_acting_k(target_k1_acting_k3, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_evaluation(
        module, env_name, episodes, num_candidates, seed, progress=True, replan_every=None, **_
    ):
        seen["k"] = num_candidates
        return {"success_rate": 0.0, "num_candidates": num_candidates}

    monkeypatch.setattr(training.evaluate, "evaluate_policy", fake_evaluation)
    assert training.evaluate.main([str(target_k1_acting_k3), "--episodes", "1"]) == 0
    assert seen["k"] == 3 and json.loads(capsys.readouterr().out)["num_candidates"] == 3
    assert training.evaluate.main([str(target_k1_acting_k3), "--episodes", "1", "--num-candidates", "2"]) == 0
    assert seen["k"] == 2  # an explicit K still wins

    bundle = export_bundle(target_k1_acting_k3, ExportOptions(out=tmp_path / "bundle", formats=("onnx",)))
    assert bundle.metadata["default_num_candidates"] == 3
