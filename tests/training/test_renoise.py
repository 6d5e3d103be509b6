"""Re-noised MeanFlow candidates (`--renoise-time`, `--renoise-target`): the maths by hand, where it
applies, the critic targets that rank them, and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from exporters.export import ExportOptions, export_bundle
from exporters.runtimes import OnnxRuntimePolicy
from tests.exporters.checkpoints import SMALL_MLP, CheckpointSpec, write_checkpoint, write_fql_checkpoint
from tests.training.test_fused_step import agent_pair
from tests.training.test_precision_and_study_options import make_batch
from training.agents.best_of_n import expected_max_q
from training.agents.common import Batch, best_of_k, critic_loss, renoised_actions, td_loss
from training.config import ActingOverrides, AgentConfig
from training.inference import check_renoise_time, load_serving_policy
from training.train import build_parser, config_from_args


class LinearFlow(nn.Module):
    """g(s, z, t) = 0.5 z + t: simple enough to follow by hand (s is not read)."""

    def forward(self, observations: Tensor, z: Tensor, t: Tensor) -> Tensor:
        return 0.5 * z + t


class FirstCoordinate(nn.Module):
    """A two-member 'critic' scoring a candidate by its first coordinate (both members agree)."""

    def forward(self, observations: Tensor, actions: Tensor) -> Tensor:
        return actions[:, 0].expand(2, -1)


def test_renoised_actions_by_hand():
    noise = torch.tensor([[0.2, -0.4, 1.0]])
    # one step: clip(0.5 e + 1) = clip([1.1, 0.8, 1.5]) = [1, 0.8, 1]; e reversed = [1, -0.4, 0.2];
    # z = 0.5 a + 0.5 e_rev = [1.0, 0.2, 0.6]; g(z, 0.5) = 0.5 z + 0.5 = [1.0, 0.6, 0.8]
    got = renoised_actions(LinearFlow(), torch.zeros(1, 2), noise, 0.5)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.6, 0.8]]))
    # t_r = 0.25: z = 0.75 a + 0.25 e_rev = [1.0, 0.5, 0.8]; g = 0.5 z + 0.25 = [0.75, 0.5, 0.65]
    got = renoised_actions(LinearFlow(), torch.zeros(1, 2), noise, 0.25)
    torch.testing.assert_close(got, torch.tensor([[0.75, 0.5, 0.65]]))


def test_best_of_k_ranks_the_renoised_candidates():
    noise = torch.tensor([[[0.2, -0.4, 1.0]], [[-1.0, 0.0, -0.6]]])  # K = 2, B = 1, d = 3
    observations = torch.zeros(1, 2)
    # candidate 2 by hand: a = clip([0.5, 1, 0.7]) = [0.5, 1, 0.7]; e_rev = [-0.6, 0, -1];
    # z = [-0.05, 0.5, -0.15]; g = 0.5 z + 0.5 = [0.475, 0.75, 0.425]
    actions, q, candidates = best_of_k(LinearFlow(), FirstCoordinate(), observations, noise, 0.5)
    torch.testing.assert_close(candidates[:, 0], torch.tensor([[1.0, 0.6, 0.8], [0.475, 0.75, 0.425]]))
    torch.testing.assert_close(actions, torch.tensor([[1.0, 0.6, 0.8]]))
    torch.testing.assert_close(q, torch.tensor([1.0]))
    # off: the one-step candidates, unchanged
    _, _, one_step = best_of_k(LinearFlow(), FirstCoordinate(), observations, noise)
    torch.testing.assert_close(one_step[:, 0], torch.tensor([[1.0, 0.8, 1.0], [0.5, 1.0, 0.7]]))


class Coordinate(nn.Module):
    """A two-member 'critic' scoring candidates [..., d] by coordinate `i` (both members agree)."""

    def __init__(self, i: int) -> None:
        super().__init__()
        self.i = i

    def forward(self, observations: Tensor, actions: Tensor) -> Tensor:
        return actions[..., self.i].expand(2, *actions.shape[:-1])


# the two candidates of test_best_of_k_ranks_the_renoised_candidates: one step
# [1, 0.8, 1] and [0.5, 1, 0.7]; re-noised to t_r = 0.5: [1, 0.6, 0.8] and [0.475, 0.75, 0.425]
NEXT_NOISE = torch.tensor([[[0.2, -0.4, 1.0]], [[-1.0, 0.0, -0.6]]])


def test_renoise_target_values_the_renoised_next_candidates():
    observations = torch.zeros(1, 2)
    batch = Batch(
        observations, torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([-1.0]), torch.ones(1), observations
    )
    critic = Coordinate(1)
    # MFQL's target: the target critic's best, by the second coordinate: one step 1.0, re-noised 0.75
    for renoise, best in ((None, 1.0), (0.5, 0.75)):
        loss, _ = critic_loss(critic, critic, LinearFlow(), batch, NEXT_NOISE, 0.9, renoise)
        torch.testing.assert_close(loss, td_loss(critic, batch, torch.tensor([-1.0 + 0.9 * best]))[0])
    # QC's target in bon: picked by the online critic (second coordinate: candidate 2 either
    # way), valued by the target critic (first coordinate): one step 0.5, re-noised 0.475
    for renoise, value, online in ((None, 0.5, 1.0), (0.5, 0.475, 0.75)):
        next_q, online_q = expected_max_q(
            LinearFlow(), critic, Coordinate(0), observations, NEXT_NOISE, renoise
        )
        torch.testing.assert_close((next_q, online_q), (torch.tensor([value]), torch.tensor([online])))


@pytest.mark.parametrize("agent", ["mfql", "bon"])
def test_renoise_target_changes_the_critic_loss_only(agent):
    on, off = (
        agent_pair(agent, num_candidates=4, action_horizon=2, renoise_time=0.3, renoise_target=target)[0]
        for target in (True, False)
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the initialisation, whose zero heads make every candidate's Q equal
        for name, module in on.nets().items():
            for mine, theirs in zip(module.parameters(), off.nets()[name].parameters(), strict=True):
                mine.copy_(0.3 * torch.randn(mine.shape, generator=generator))
                theirs.copy_(mine)
    batch = make_batch(action_dim=6, seed=3)
    noises, t = on.update_noise(batch.actions.shape[0])
    losses_on = on.step_losses(on.nets(), batch, noises, t)
    losses_off = off.step_losses(off.nets(), batch, noises, t)
    assert losses_on[0].item() != pytest.approx(losses_off[0].item())  # the critic's TD loss
    for got, want in zip(losses_on[1:-1], losses_off[1:-1], strict=True):  # MFI (and MFQL's actor) loss
        torch.testing.assert_close(got, want)


def test_renoise_target_needs_a_renoise_time():
    with pytest.raises(ValueError, match=r"set renoise_time \(--renoise-time\) too"):
        AgentConfig(renoise_target=True)
    args = build_parser().parse_args(["--agent", "fql", "--renoise-target"])
    with pytest.raises(ValueError, match="--renoise-target: MFQL options"):
        config_from_args(args)
    args = build_parser().parse_args(["--agent", "bon", "--renoise-time", "0.3", "--renoise-target"])
    agent_config = config_from_args(args).agent_config
    assert (agent_config.renoise_time, agent_config.renoise_target) == (0.3, True)
    assert (
        config_from_args(build_parser().parse_args(["--agent", "bon"])).agent_config.renoise_target is False
    )


def test_renoise_time_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match=r"renoise_time must be in \(0, 1\)"):
        AgentConfig(renoise_time=1.0)
    with pytest.raises(ValueError, match="one-step network mu\\(s, z\\) \\(fql, bon-distill\\) takes no t"):
        check_renoise_time("fql", 0.3)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        check_renoise_time("bon", 0.0)
    args = build_parser().parse_args(["--agent", "fql", "--renoise-time", "0.3"])
    with pytest.raises(ValueError, match="--renoise-time: MFQL options"):
        config_from_args(args)
    args = build_parser().parse_args(["--agent", "bon", "--renoise-time", "0.3"])
    assert config_from_args(args).agent_config.renoise_time == 0.3


def test_an_override_of_zero_turns_a_runs_renoising_off(tmp_path):
    spec = CheckpointSpec(SMALL_MLP, 7, 3, {}, renoise_time=0.4)
    path = write_checkpoint(tmp_path / "run", spec)
    assert load_serving_policy(path)[0].renoise_time == 0.4
    assert load_serving_policy(path, ActingOverrides(renoise_time=0.2))[0].renoise_time == 0.2
    assert load_serving_policy(path, ActingOverrides(renoise_time=0.0))[0].renoise_time is None


def test_fql_checkpoints_refuse_a_renoise_override(tmp_path):
    path = write_fql_checkpoint(tmp_path / "fql", CheckpointSpec(SMALL_MLP, 7, 3, {}))
    with pytest.raises(ValueError, match="takes no t"):
        load_serving_policy(path, ActingOverrides(renoise_time=0.3))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_bakes_renoised_candidates_into_the_graph(tmp_path):
    checkpoint = write_checkpoint(
        tmp_path / "run", CheckpointSpec(SMALL_MLP, 9, 2, {}, seed=5, action_horizon=3)
    )
    one_step = export_bundle(
        checkpoint, ExportOptions(out=tmp_path / "one", formats=("onnx",), max_candidates=8)
    )
    renoised = export_bundle(
        checkpoint,
        ExportOptions(out=tmp_path / "re", max_candidates=8, acting=ActingOverrides(renoise_time=0.3)),
    )
    assert one_step.metadata["renoise_time"] is None and renoised.metadata["renoise_time"] == 0.3
    # export_bundle refuses a graph that disagrees with eager PyTorch; both runtimes were compared
    assert renoised.parity["onnxruntime"].problems == [] and renoised.parity["torchscript"].problems == []

    rng = np.random.default_rng(0)
    observation = rng.normal(size=(4, 9)).astype(np.float32)
    noise = rng.normal(size=(4, 8, 3, 2)).astype(np.float32)
    eager, _ = load_serving_policy(checkpoint, ActingOverrides(renoise_time=0.3))
    expected = eager(torch.from_numpy(observation), torch.from_numpy(noise))
    got = OnnxRuntimePolicy(tmp_path / "re" / "policy.onnx")(observation, noise)
    np.testing.assert_allclose(got["candidates"], expected[2].numpy(), atol=1e-5)
    plain = OnnxRuntimePolicy(tmp_path / "one" / "policy.onnx")(observation, noise)
    assert not np.allclose(plain["candidates"], got["candidates"], atol=1e-3)
