"""A pessimistic critic target (`--target-aggregate min`, Q-chunking's q_agg=min for the target):
the target against hand-derived values for the best-of-K target (MFQL, FQL) and QC's expected-max
target (bon), every agent's step reading the option, and the CLI run that stores and keeps it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.training.test_also_eval import _train
from tests.training.test_best_of_n import NOISE, ONLINE, TARGET, NoiseIsTheAction
from tests.training.test_precision_and_study_options import make_batch
from training.agents import build_agent
from training.agents.best_of_n import expected_max_critic_loss, expected_max_q
from training.agents.common import Batch, backup_discount, best_of_k, critic_loss, td_loss
from training.checkpoint import load_policy_checkpoint
from training.config import AgentConfig, NetworkConfig, resolve_agent_config
from training.train import build_parser, config_from_args

OBSERVATIONS = torch.zeros(2, 3)
BATCH = Batch(
    observations=OBSERVATIONS,
    actions=torch.tensor([[0.5, 0.5], [-0.2, 0.4]]),
    rewards=torch.tensor([-1.0, -1.0]),
    masks=torch.tensor([1.0, 1.0]),
    next_observations=OBSERVATIONS,
)


def _expected_loss(y: list[float]) -> float:
    q = [[0.5, -0.2], [0.5, 0.4]]  # ONLINE: member 1 reads a0, member 2 reads a1
    return float(np.mean([(q[e][b] - y[b]) ** 2 for e in range(2) for b in range(2)]))


def test_best_of_k_target_by_the_minimum_by_hand():
    # TARGET's members: 2 a0 + 0.5 and -a1 - 0.5. Their minimum over the clipped candidates,
    # state 0: (0.2, 0.4) -> min(0.9, -0.9) = -0.9; (0.9, -0.1) -> min(2.3, -0.4) = -0.4;
    # (1.0, 0.3) -> min(2.5, -0.8) = -0.8: the best is -0.4 (the mean's best, 0.95, is candidate
    # 1 too). State 1: (-0.5, -0.5) -> -0.5; (0.0, 0.1) -> -0.6; (-1.0, 0.8) -> -1.5: -0.5.
    _, next_q, _ = best_of_k(NoiseIsTheAction(), TARGET, OBSERVATIONS, NOISE, aggregate="min")
    torch.testing.assert_close(next_q, torch.tensor([-0.4, -0.5]))
    loss, _ = critic_loss(ONLINE, TARGET, NoiseIsTheAction(), BATCH, NOISE, 0.9, aggregate="min")
    assert loss.item() == pytest.approx(_expected_loss([-1.0 + 0.9 * -0.4, -1.0 + 0.9 * -0.5]), rel=1e-6)
    mean_loss, _ = critic_loss(ONLINE, TARGET, NoiseIsTheAction(), BATCH, NOISE, 0.9)
    # the mean's target: state 0 keeps (0.9, -0.1) at 0.95; state 1 (0.0, 0.1) at -0.05
    assert mean_loss.item() == pytest.approx(
        _expected_loss([-1.0 + 0.9 * 0.95, -1.0 + 0.9 * -0.05]), rel=1e-6
    )


def test_expected_max_target_by_the_minimum_by_hand():
    # The online critic's minimum picks: state 0 min(a0, a1) = 0.2, -0.1, 0.3 -> candidate 2,
    # (1.0, 0.3); state 1: -0.5, 0.0, -1.0 -> candidate 1, (0.0, 0.1). The target critic's
    # minimum values them: min(2.5, -0.8) = -0.8 and min(0.5, -0.6) = -0.6 (its mean: 0.85, -0.05).
    next_q, online_q = expected_max_q(
        NoiseIsTheAction(), ONLINE, TARGET, OBSERVATIONS, NOISE, aggregate="min"
    )
    torch.testing.assert_close(next_q, torch.tensor([-0.8, -0.6]))
    torch.testing.assert_close(online_q, torch.tensor([0.3, 0.0]))
    loss, info = expected_max_critic_loss(
        ONLINE, TARGET, NoiseIsTheAction(), BATCH, NOISE, 0.9, aggregate="min"
    )
    assert loss.item() == pytest.approx(_expected_loss([-1.0 + 0.9 * -0.8, -1.0 + 0.9 * -0.6]), rel=1e-6)
    assert info["critic/next_q"].item() == pytest.approx(-0.7)


def test_the_minimum_can_pick_another_next_chunk():
    # One state, two candidates, the online critics disagree: (0.9, -0.1) has mean 0.4, min -0.1;
    # (0.3, 0.2) mean 0.25, min 0.2. The mean picks the first, the minimum the second; the
    # target critic (2 a0 + 0.5, -a1 - 0.5) values them min(2.3, -0.4) and min(1.1, -0.7).
    noise = torch.tensor([[[0.9, -0.1]], [[0.3, 0.2]]])
    observations = torch.zeros(1, 3)
    by_min, online_min = expected_max_q(
        NoiseIsTheAction(), ONLINE, TARGET, observations, noise, aggregate="min"
    )
    torch.testing.assert_close(by_min, torch.tensor([-0.7]))
    torch.testing.assert_close(online_min, torch.tensor([0.2]))
    by_mean, _ = expected_max_q(NoiseIsTheAction(), ONLINE, TARGET, observations, noise)
    torch.testing.assert_close(by_mean, torch.tensor([(2.3 - 0.4) / 2]))


@pytest.mark.parametrize("agent", ["mfql", "fql", "bon"])
def test_every_agents_step_uses_the_configured_target(agent):
    """Each agent's critic loss is the TD loss to a target by the ensemble's minimum, computed apart."""
    network = NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16))
    config = dataclasses.replace(
        resolve_agent_config("puzzle-3x3-play-singletask-v0", agent=agent), num_candidates=4, action_horizon=1
    )
    losses = {}
    for aggregate in ("mean", "min"):
        torch.manual_seed(0)
        built = build_agent(
            agent, 6, 3, dataclasses.replace(config, target_aggregate=aggregate), network, 100, seed=0
        )
        with torch.no_grad():  # distinct online and target critics, so the two targets differ
            for parameter in built.target_critic.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
        batch = make_batch()
        noises, t = built.update_noise(batch.actions.shape[0])
        losses[aggregate] = built.step_losses(built.nets(), batch, noises, t)[0].item()
        if aggregate == "min":
            with torch.no_grad():
                policy = built.nets()["policy"]
                if agent == "bon":
                    next_q, _ = expected_max_q(
                        policy,
                        built.critic,
                        built.target_critic,
                        batch.next_observations,
                        noises[0],
                        None,
                        "min",
                    )
                else:
                    _, next_q, _ = best_of_k(
                        policy, built.target_critic, batch.next_observations, noises[0], None, "min"
                    )
                target = batch.rewards + backup_discount(built.config) * batch.masks * next_q
                expected = td_loss(built.critic, batch, target)[0].item()
            assert losses["min"] == pytest.approx(expected, rel=1e-5)
    assert losses["min"] != pytest.approx(losses["mean"], rel=1e-4)


def test_unknown_target_aggregates_are_refused():
    with pytest.raises(ValueError, match="target_aggregate must be one of mean, min; got 'max'"):
        AgentConfig(target_aggregate="max")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--target-aggregate", "max"])
    for agent in ("mfql", "fql", "bon"):
        args = build_parser().parse_args(["--agent", agent, "--target-aggregate", "min"])
        assert config_from_args(args).agent_config.target_aggregate == "min"
        assert (
            config_from_args(build_parser().parse_args(["--agent", agent])).agent_config.target_aggregate
            == "mean"
        )


def test_a_run_stores_its_target_and_resume_keeps_it(tmp_path, two_episode_data_dir):
    run = tmp_path / "run"
    assert _train(run, two_episode_data_dir, "--stop-after", "3", "--target-aggregate", "min") == 0
    assert load_policy_checkpoint(run).config.agent_config.target_aggregate == "min"
    # the target is the run's maths: a resume without the flag keeps it
    assert _train(run, two_episode_data_dir, "--resume") == 0
    resumed = load_policy_checkpoint(run)
    assert resumed.step == 6 and resumed.config.agent_config.target_aggregate == "min"
