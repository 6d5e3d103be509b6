"""`mfql-average`: a step directory whose weights are the mean of a run's checkpoints'."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from training.agents import build_agent
from training.average import main as average
from training.checkpoint import load_policy_checkpoint
from training.config import AgentConfig, NetworkConfig, TrainConfig
from training.inference import load_serving_policy, sample_actions
from training.replay_buffer import ReplayBuffer
from training.training_state import save_training_state

TINY = NetworkConfig(policy="mlp", mlp_hidden=(32, 32), critic_hidden=(32, 32))


def _buffer(shift: float = 0.0) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    n, obs_dim, action_dim = 300, 6, 2
    data = types.SimpleNamespace(
        size=n,
        observations=rng.normal(size=(n, obs_dim)) + shift,
        actions=rng.uniform(-1, 1, size=(n, action_dim)),
        rewards=-rng.integers(0, 2, size=n).astype(float),
        masks=np.ones(n),
        next_observations=rng.normal(size=(n, obs_dim)),
    )
    return ReplayBuffer(data, data.observations.mean(0), data.observations.std(0), 0, 0)


def _run(run_dir, agent_name: str = "bon", steps=(1, 2, 3), shift: float = 0.0, **agent_options):
    """A run with a checkpoint after each of `steps` updates; the agent and its saved weights per step."""
    agent_config = AgentConfig(num_candidates=4, **agent_options)
    config = TrainConfig(agent=agent_name, network=TINY, offline_steps=max(steps), agent_config=agent_config)
    agent, buffer = build_agent(agent_name, 6, 2, agent_config, TINY, max(steps), seed=0), _buffer(shift)
    saved = {}
    for step in range(1, max(steps) + 1):
        agent.update(buffer.sample(32), step)
        if step in steps:
            metrics = {"success_rate": 0.5, "eval_step": step}
            saved[step] = load_policy_checkpoint(
                save_training_state(run_dir, step, config, agent, buffer, metrics)
            ).model
    return agent, saved


@pytest.mark.parametrize(
    "agent_name, options", [("bon", {}), ("mfql", {"policy_ema_rate": 0.25}), ("fql", {})]
)
def test_the_average_is_the_mean_of_every_network_and_keeps_the_statistics(tmp_path, agent_name, options):
    _, saved = _run(tmp_path / "run", agent_name, **options)
    assert average([str(tmp_path / "run"), "--last", "3", "--out", str(tmp_path / "avg")]) == 0
    averaged = load_policy_checkpoint(tmp_path / "avg")
    assert averaged.model.keys() == saved[3].keys()
    networks = {key.split(".")[0] for key in averaged.model} - {"normalizer"}
    assert {"policy", "critic", "target_critic"} <= networks
    for key, value in averaged.model.items():
        expected = (saved[1][key] + saved[2][key] + saved[3][key]) / 3
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    # the weights did move between checkpoints, so the mean is none of them
    assert not torch.equal(averaged.model["policy.net.0.weight"], saved[3]["policy.net.0.weight"])
    assert torch.equal(averaged.obs_mean, saved[3]["normalizer.mean"])
    # the newest checkpoint's config and step; its evaluation is not the average's
    assert averaged.step == 3 and averaged.config.agent == agent_name
    assert averaged.metrics == {"averaged_steps": [1, 2, 3]}
    description = json.loads((tmp_path / "avg" / "config.json").read_text())
    assert [p.rsplit("_", 1)[-1] for p in description["averaged_from"]] == [
        "000000001",
        "000000002",
        "000000003",
    ]


def test_the_average_serves_its_mean_weights(tmp_path):
    """What acts is the averaged acting network (the EMA copy where the run keeps one)."""
    _, saved = _run(tmp_path / "run", "mfql", policy_ema_rate=0.25)
    assert average([str(tmp_path / "run"), "--steps", "1,3", "--out", str(tmp_path / "avg")]) == 0
    module, _ = load_serving_policy(tmp_path / "avg")
    for name, got in module.policy.state_dict().items():
        want = (saved[1][f"acting_policy.{name}"] + saved[3][f"acting_policy.{name}"]) / 2
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    actions, _ = sample_actions(module, torch.randn(3, 6), 4, torch.Generator().manual_seed(0))
    assert actions.shape == (3, 2) and torch.isfinite(actions).all()


def test_one_checkpoint_averages_to_itself(tmp_path):
    _, saved = _run(tmp_path / "run", "bon", steps=(1, 2))
    assert average([str(tmp_path / "run"), "--last", "1", "--out", str(tmp_path / "avg")]) == 0
    averaged = load_policy_checkpoint(tmp_path / "avg")
    assert all(torch.equal(value, saved[2][key]) for key, value in averaged.model.items())


def test_a_rewrite_replaces_the_average_and_nothing_else(tmp_path):
    _run(tmp_path / "run", "bon")
    out = tmp_path / "avg"
    assert average([str(tmp_path / "run"), "--last", "2", "--out", str(out)]) == 0
    assert average([str(tmp_path / "run"), "--last", "3", "--out", str(out)]) == 0
    assert load_policy_checkpoint(out).metrics == {"averaged_steps": [1, 2, 3]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg", "run"]


def _refusal(capsys, argv) -> str:
    assert average([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def test_what_cannot_be_averaged_is_refused_with_the_reason(tmp_path, capsys):
    _run(tmp_path / "run", "bon")
    run, out = tmp_path / "run", tmp_path / "avg"
    assert "more checkpoints than the 3 kept" in _refusal(capsys, [run, "--last", "4", "--out", out])
    assert "--last must be at least 1" in _refusal(capsys, [run, "--last", "0", "--out", out])
    assert "no checkpoint at step(s) [5]; it has [1, 2, 3]" in _refusal(
        capsys, [run, "--steps", "1,5", "--out", out]
    )
    assert "no checkpoints" in _refusal(capsys, [tmp_path, "--out", out])
    assert "inside the run's checkpoints/" in _refusal(
        capsys, [run, "--out", run / "checkpoints" / "step_avg"]
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert "is not an average that mfql-average wrote" in _refusal(capsys, [run, "--out", tmp_path / "notes"])
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    # another run's real checkpoint is never overwritten by an average
    _run(tmp_path / "other", "bon", steps=(1,))
    step = tmp_path / "other" / "checkpoints" / "step_000000001"
    before = (step / "model.safetensors").read_bytes()
    assert "is not an average" in _refusal(capsys, [run, "--out", step])
    assert (step / "model.safetensors").read_bytes() == before and (step / "trainer.safetensors").is_file()
    assert not out.exists()


def test_checkpoints_of_other_data_or_networks_are_not_averaged(tmp_path, capsys):
    """Two runs' steps copied into one folder: other observation statistics, or another agent."""
    _run(tmp_path / "a", "bon", steps=(1,))
    _run(tmp_path / "b", "bon", steps=(2,), shift=1.0)
    _run(tmp_path / "c", "mfql", steps=(3,))
    mixed = tmp_path / "mixed" / "checkpoints"
    mixed.mkdir(parents=True)
    for run in ("a", "b", "c"):
        for step in (tmp_path / run / "checkpoints").iterdir():
            step.rename(mixed / step.name)
    out = tmp_path / "avg"
    message = _refusal(capsys, [tmp_path / "mixed", "--steps", "1,2", "--out", out])
    assert "normalizer.mean differs" in message and "one run (one dataset)" in message
    assert "(obs_dim, action_dim, agent)" in _refusal(
        capsys, [tmp_path / "mixed", "--steps", "1,3", "--out", out]
    )
    assert not out.exists()


def test_an_exported_average_records_what_it_averaged_and_claims_no_success_rate(tmp_path):
    """The newest checkpoint's success rate (0.5 here) is not the average's: the bundle says none."""
    from exporters.export import ExportOptions, export_bundle

    _run(tmp_path / "run", "bon")
    assert average([str(tmp_path / "run"), "--last", "2", "--out", str(tmp_path / "avg")]) == 0
    metadata = export_bundle(
        tmp_path / "avg", ExportOptions(out=tmp_path / "bundle", formats=("onnx",))
    ).metadata
    assert metadata["success_rate"] is None and metadata["training_step"] == 3
    assert metadata["training_metrics"] == {"averaged_steps": [2, 3]}
