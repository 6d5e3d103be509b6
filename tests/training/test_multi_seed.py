"""Several seeds in one vectorised step (training.multi_seed): seed i's numbers are those of a
single-seed run of seed i, within float tolerance, for MFQL and FQL."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.training.test_fused_step import assert_same_agents
from tests.training.test_precision_and_study_options import make_batch
from training.agents import build_agent
from training.config import NetworkConfig, resolve_agent_config
from training.multi_seed import StackedSeeds

TASK = "cube-single-play-singletask-task2-v0"
SMALL = NetworkConfig(policy="mlp", mlp_hidden=(32, 32), critic_hidden=(32, 32))
SEEDS = (0, 1, 2)


def build(agent_name: str, seed: int, **overrides):
    config = dataclasses.replace(resolve_agent_config(TASK, "reference", agent=agent_name), **overrides)
    return build_agent(agent_name, 6, 3, config, SMALL, 20, seed=seed)


@pytest.mark.parametrize(
    ("agent_name", "overrides"),
    [
        ("mfql", {"alpha_update_interval": 1, "alpha_threshold": 1.01, "alpha_window": 3}),
        ("fql", {}),
        ("mfql", {"action_horizon": 2, "policy_ema_rate": 0.1}),
        ("bon-distill", {"num_candidates": 4, "action_horizon": 2}),
    ],
)
def test_each_seed_matches_its_single_seed_run(agent_name, overrides):
    chunk = 3 * overrides.get("action_horizon", 1)
    singles = [build(agent_name, seed, **overrides) for seed in SEEDS]
    stacked_agents = [build(agent_name, seed, **overrides) for seed in SEEDS]
    stacked = StackedSeeds(stacked_agents)
    for step in range(1, 7):
        # each seed its own batch (its own data order)
        batches = [make_batch(action_dim=chunk, seed=100 * seed + step) for seed in SEEDS]
        expected = [agent.update(batch, step) for agent, batch in zip(singles, batches, strict=True)]
        got = stacked(batches, step)
        for want, have in zip(expected, got, strict=True):
            assert set(have) == set(want)
            for key, value in want.items():
                assert have[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for single, agent in zip(singles, stacked_agents, strict=True):
        assert_same_agents(single, agent)
        assert (
            single.alpha_controller.state_dict()["alpha"]
            == pytest.approx(agent.alpha_controller.state_dict()["alpha"])
            if agent_name == "mfql"
            else True
        )
    # the seeds really differ
    assert not torch.equal(
        stacked_agents[0].policy.state_dict()["net.0.weight"],
        stacked_agents[1].policy.state_dict()["net.0.weight"],
    )


def test_a_stacked_agent_keeps_training_eagerly():
    """Each agent's tensors are views of its rows: its own eager update still works on them."""
    agents = [build("fql", seed) for seed in SEEDS[:2]]
    single = build("fql", 0)
    stacked = StackedSeeds(agents)
    stacked([make_batch(seed=1), make_batch(seed=2)], 1)
    single.update(make_batch(seed=1), 1)
    agents[0].update(make_batch(seed=3), 2)
    single.update(make_batch(seed=3), 2)
    assert_same_agents(single, agents[0])


# --- mfql-train --seeds ------------------------------------------------------------------------

CLI_TASK = "cube-single-play-singletask-task2-v0"


def _train(data_dir, out, *extra: str) -> int:
    from training.train import main

    return main(
        [
            "--env", CLI_TASK, "--dataset-dir", str(data_dir), "--out", str(out), "--agent", "mfql",
            "--policy", "mlp", "--mlp-hidden", "16,16", "--critic-hidden", "16,16", "--steps", "12",
            "--batch-size", "16", "--num-candidates", "2", "--eval-episodes", "0", "--log-every", "4",
            "--checkpoint-every", "6", "--precision", "fp32", *extra,
        ]
    )  # fmt: skip


def _weights(run_dir) -> dict[str, torch.Tensor]:
    from training.checkpoint import list_checkpoints, load_policy_checkpoint

    return load_policy_checkpoint(list_checkpoints(run_dir)[-1]).model


def test_the_seeds_flag_writes_one_run_per_seed_equal_to_single_seed_runs(two_episode_data_dir, tmp_path):
    assert _train(two_episode_data_dir, tmp_path / "both", "--seeds", "4,7") == 0
    for seed in (4, 7):
        assert _train(two_episode_data_dir, tmp_path / f"alone{seed}", "--seed", str(seed)) == 0
        together, alone = _weights(tmp_path / "both" / f"seed{seed}"), _weights(tmp_path / f"alone{seed}")
        assert together.keys() == alone.keys()
        for key in alone:
            torch.testing.assert_close(together[key], alone[key], rtol=1e-4, atol=1e-6, msg=key)
    # Each seed logs its own losses; the two seeds differ.
    logs = [(tmp_path / "both" / f"seed{s}" / "metrics.csv").read_text() for s in (4, 7)]
    assert logs[0] != logs[1] and logs[0].count("\n") == logs[1].count("\n") >= 3


def test_the_seeds_flag_resumes_every_seed_and_refuses_bad_lists(two_episode_data_dir, tmp_path, capsys):
    from training.checkpoint import list_checkpoints

    out = tmp_path / "run"
    assert _train(two_episode_data_dir, out, "--seeds", "0,1", "--stop-after", "6") == 0
    assert _train(two_episode_data_dir, out, "--seeds", "0,1", "--resume") == 0
    assert _train(two_episode_data_dir, tmp_path / "straight", "--seeds", "0,1") == 0
    for seed in (0, 1):
        assert list_checkpoints(out / f"seed{seed}")[-1].name.endswith("12")
        resumed, straight = _weights(out / f"seed{seed}"), _weights(tmp_path / "straight" / f"seed{seed}")
        for key in straight:
            torch.testing.assert_close(resumed[key], straight[key], rtol=1e-4, atol=1e-6, msg=key)
    assert _train(two_episode_data_dir, tmp_path / "bad", "--seeds", "0,0") == 2
    assert "distinct seeds" in capsys.readouterr().err
    assert _train(two_episode_data_dir, tmp_path / "bad", "--seeds", "0,x") == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert _train(two_episode_data_dir, out, "--seeds", "0,1") == 2  # exists: --resume or --overwrite
    assert "already exists" in capsys.readouterr().err
