"""The MLP policy's and critics' GELU: exact erf by default (what every recorded result used),
the reference's tanh approximation on request, erf for checkpoints that do not record it."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import NetworkConfig, TrainConfig, config_from_dict, config_to_dict
from training.networks import CriticEnsemble, MLPPolicy
from training.train import build_parser, config_from_args


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:  # flax/jax nn.gelu(approximate=True), written out
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def critic_by_hand(critic: CriticEnsemble, x: torch.Tensor, activation) -> torch.Tensor:
    """Member 0 of the ensemble as plain maths: Linear -> GELU -> LayerNorm, then the head."""
    layers = list(critic.net)
    for i in range(0, len(layers) - 1, 3):
        linear, norm = layers[i], layers[i + 2]
        x = activation(x @ linear.weight[0] + linear.bias[0])
        x = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6) * norm.weight[0] + norm.bias[0]
    head = layers[-1]
    return (x @ head.weight[0] + head.bias[0]).squeeze(-1)


@pytest.mark.parametrize("kind, activation", [("tanh", gelu_tanh), ("erf", gelu_erf)])
def test_critic_uses_the_configured_gelu(kind, activation):
    torch.manual_seed(0)
    config = NetworkConfig(critic_hidden=(16, 16), gelu=kind)
    critic = CriticEnsemble(5, 2, config)
    for p in critic.parameters():  # away from the zero/identity initialisation, so GELU matters
        p.data.normal_(0, 0.7)
    obs, act = torch.randn(9, 5) * 2, torch.randn(9, 2)
    expected = critic_by_hand(critic, torch.cat([obs, act], -1), activation)
    other = gelu_erf if activation is gelu_tanh else gelu_tanh
    got = critic(obs, act)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - critic_by_hand(critic, torch.cat([obs, act], -1), other)).abs().max() > 1e-4


def test_mlp_policy_follows_the_same_choice():
    for kind, approximate in (("tanh", "tanh"), ("erf", "none")):
        policy = MLPPolicy(5, 2, NetworkConfig(policy="mlp", mlp_hidden=(8,), gelu=kind))
        gelus = [m for m in policy.modules() if isinstance(m, torch.nn.GELU)]
        assert gelus and all(m.approximate == approximate for m in gelus)
    with pytest.raises(ValueError, match="gelu"):
        MLPPolicy(5, 2, NetworkConfig(policy="mlp", mlp_hidden=(8,), gelu="relu"))


def test_choice_round_trips_and_old_checkpoints_read_as_erf():
    assert NetworkConfig().gelu == "erf"
    stored = config_to_dict(TrainConfig(network=NetworkConfig(gelu="tanh")))
    assert config_from_dict(stored).network.gelu == "tanh"
    del stored["network"]["gelu"]  # what a checkpoint from before the field holds
    assert config_from_dict(stored).network.gelu == "erf"


def test_cli_records_the_choice():
    args = build_parser().parse_args(["--env", "cube-single-play-singletask-task2-v0", "--gelu", "tanh"])
    assert config_from_args(args).network.gelu == "tanh"
    args = build_parser().parse_args(["--env", "cube-single-play-singletask-task2-v0"])
    assert config_from_args(args).network.gelu == "erf"
