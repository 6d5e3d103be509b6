"""The self-distillation anchor (`--anchor-weight`, a study option off in the paper): the
multi-step target's arithmetic by hand, what it does for an exact MeanFlow map, and that the
actor loss adds exactly weight x the regression and nothing when off."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from tests.training.test_precision_and_study_options import make_batch
from training.agents.mfql import actor_loss, self_distillation_target
from training.config import AgentConfig, NetworkConfig
from training.networks import CriticEnsemble, build_policy
from training.train import build_parser, config_from_args, main


class ScaledInput(nn.Module):
    """g(s, z, t) = c z: simple enough to follow the sampler by hand."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, observations: Tensor, z: Tensor, t: Tensor) -> Tensor:
        return self.c * z


class ExactMeanFlow(nn.Module):
    """The exact residual map g = z - u(z, 0, t) for data that is one point a* per state.

    With z_t = (1 - t) a* + t e, the average velocity over [0, t] is u = (z_t - a*) / t.
    """

    def __init__(self, data_action: Tensor) -> None:
        super().__init__()
        self.data_action = data_action

    def forward(self, observations: Tensor, z: Tensor, t: Tensor) -> Tensor:
        return z - (z - self.data_action) / t


def test_two_step_target_by_hand():
    one_step, noise = torch.tensor([[0.4, -0.2]]), torch.tensor([[1.0, 0.6]])
    # t = 1/2: z = (one_step + noise) / 2 = [0.7, 0.2]; g = 3 z; x0 = z / 2 + g / 2 = 2 z
    target = self_distillation_target(ScaledInput(3.0), torch.zeros(1, 4), noise, one_step, steps=2)
    torch.testing.assert_close(target, torch.tensor([[1.0, 0.4]]))  # [1.4, 0.4] clipped to 1


def test_three_step_target_by_hand_renoises_with_the_implied_noise():
    one_step, noise = torch.tensor([[0.3]]), torch.tensor([[0.9]])
    target = self_distillation_target(ScaledInput(0.5), torch.zeros(1, 1), noise, one_step, steps=3)
    # t = 2/3: z = 0.3/3 + 0.9 * 2/3 = 0.7; x0 = z/3 + (2/3)(0.35) = 7/15; e = (0.7 - 7/45) / (2/3) = 49/60
    # t = 1/3: z = (2/3)(7/15) + (1/3)(49/60) = 7/12; x0 = (2/3)(7/12) + (1/3)(7/24) = 35/72
    torch.testing.assert_close(target, torch.tensor([[35 / 72]]))


@pytest.mark.parametrize("steps", [2, 4])
def test_an_exact_meanflow_map_pulls_a_moved_one_step_action_back_to_the_data(steps):
    data_action = torch.tensor([[0.25, -0.5, 0.75]])
    noise = torch.tensor([[0.3, 1.2, -0.7]])
    moved = torch.tensor([[0.9, 0.1, -0.2]])  # where a Q term might have pushed g(s, e, 1)
    target = self_distillation_target(ExactMeanFlow(data_action), torch.zeros(1, 2), noise, moved, steps)
    torch.testing.assert_close(target, data_action)


def test_actor_loss_adds_weight_times_the_regression_on_the_target_and_nothing_when_off():
    torch.manual_seed(0)
    network = NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16))
    policy, critic = build_policy(5, 3, network), CriticEnsemble(5, 3, network)
    for p in policy.parameters():  # the zero-initialised head would make g = 0 for every input
        nn.init.normal_(p, std=0.3)
    batch, noise = make_batch(b=8, obs_dim=5, action_dim=3, seed=3), torch.randn(8, 3)

    off, off_info = actor_loss(policy, critic, batch, noise, AgentConfig())
    assert "actor/anchor_loss" not in off_info

    config = AgentConfig(anchor_weight=7.0, anchor_steps=3)
    on, info = actor_loss(policy, critic, batch, noise, config)
    raw = policy(batch.observations, noise, torch.ones(1, 1))
    expected = (raw - self_distillation_target(policy, batch.observations, noise, raw, 3)).pow(2).mean()
    torch.testing.assert_close(info["actor/anchor_loss"], expected)
    torch.testing.assert_close(on, off + 7.0 * expected)

    # the target is a constant: the anchor's gradient is 2 w (raw - target) / n through raw only
    policy.zero_grad()
    (on - off).backward()
    with_target = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    target = self_distillation_target(policy, batch.observations, noise, raw.detach(), 3)
    (7.0 * (policy(batch.observations, noise, torch.ones(1, 1)) - target).pow(2).mean()).backward()
    for got, want in zip(with_target, (p.grad for p in policy.parameters()), strict=True):
        torch.testing.assert_close(got, want)


def test_anchor_settings_are_validated_and_reach_the_config_from_the_cli():
    with pytest.raises(ValueError, match="anchor_weight must be >= 0"):
        AgentConfig(anchor_weight=-1.0)
    with pytest.raises(ValueError, match="anchor_steps must be >= 2"):
        AgentConfig(anchor_steps=1)
    args = build_parser().parse_args(["--anchor-weight", "300", "--anchor-steps", "3", "--alpha", "30"])
    agent = config_from_args(args).agent_config
    assert (agent.anchor_weight, agent.anchor_steps, agent.alpha) == (300.0, 3, 30.0)
    default = config_from_args(build_parser().parse_args([])).agent_config
    assert dataclasses.astuple(default) == dataclasses.astuple(
        dataclasses.replace(default, anchor_weight=0.0, anchor_steps=2)
    )


def test_the_cli_refuses_bad_anchor_settings_and_mfql_options_for_fql_with_a_message(capsys, tmp_path):
    out = ["--out", str(tmp_path / "run")]
    assert main(["--anchor-weight", "-1", *out]) == 2
    assert "anchor_weight must be >= 0 (0: off); got -1.0" in capsys.readouterr().err
    assert main(["--agent", "fql", "--anchor-weight", "300", "--mfi-draws", "4", *out]) == 2
    err = capsys.readouterr().err
    assert "--mfi-draws, --anchor-weight: MFQL options; FQL (--agent fql) has no MeanFlow loss" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written
