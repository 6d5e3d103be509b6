"""Networks of MFQL: the residual policy g(s, z, t) (DiT or MLP) and the critic ensemble.

Sizes and initialisations follow the reference implementation (ALGORITHM.md, "Networks").
Everything here is plain tensor algebra (explicit RMSNorm, no fused ops) so that
`torch.func.jvp`, TorchScript and ONNX export all see the same graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from training.config import FLOW_DISTILLED_AGENTS, GELU_KINDS, NetworkConfig

OBS_NORM_EPS = 1e-8
# flax's truncated-normal variance scaling divides by this so the truncated std is exact.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def _fan_in_truncated_normal_(weight: Tensor, scale: float) -> None:
    """flax `variance_scaling(scale, 'fan_in', 'truncated_normal')` for a [out, in] weight."""
    std = math.sqrt(scale / weight.shape[1]) / _TRUNCATED_NORMAL_STD
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _dense(in_dim: int, out_dim: int, init: str) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    if init == "zero":
        nn.init.zeros_(layer.weight)
    elif init == "small":  # reference DiT: kaiming_normal(scale=0.01)
        _fan_in_truncated_normal_(layer.weight, 0.01)
    else:  # FQL MLPs: variance_scaling(1, 'fan_avg', 'uniform') == Xavier uniform
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ObservationNormalizer(nn.Module):
    """(s - mean) / (std + eps) with the training dataset's statistics (travels with the model)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def forward(self, observations: Tensor) -> Tensor:
        return (observations - self.mean) / (self.std + OBS_NORM_EPS)


class RMSNorm(nn.Module):
    """Reference RMSNorm: x / rms(x) * sqrt(dim) * g, written out so ONNX opset 17 exports it."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.scale = math.sqrt(dim)

    def forward(self, x: Tensor) -> Tensor:
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x / rms * (self.scale * self.gain)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] (unscaled, max period 1e4) followed by an MLP."""

    def __init__(self, width: int, frequencies: int) -> None:
        super().__init__()
        half = frequencies // 2
        exponents = torch.arange(half, dtype=torch.float32) / half
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * exponents))
        self.mlp = nn.Sequential(_dense(2 * half, width, "small"), nn.SiLU(), _dense(width, width, "small"))

    def forward(self, t: Tensor) -> Tensor:
        args = t * self.freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def full_precision(layer: nn.Module, x: Tensor) -> Tensor:
    """`layer(x)` in float32 even inside a bf16 autocast region.

    Output layers are tiny (width -> action_dim, width -> 1) but their rounding is what the
    losses see: a bf16 Q value near -30 is only exact to 0.125, and the MFI target subtracts
    nearly equal terms. Outside autocast (fp32 training, export) this is just `layer(x)`.
    """
    kind = x.device.type
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """adaLN-zero DiT block on a single token.

    Attention over one token is exactly its value projection followed by the output
    projection: softmax over a single key is 1, so queries, keys, their norms and the head
    split cannot change the result. We therefore compute only value and output projections;
    the function is the reference block's, with fewer (dead) parameters.
    """

    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        self.modulation = nn.Sequential(nn.SiLU(), _dense(width, 6 * width, "zero"))
        self.norm1 = RMSNorm(width)
        self.value = _dense(width, width, "small")
        self.attn_out = _dense(width, width, "small")
        self.norm2 = RMSNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            _dense(width, hidden, "small"), nn.GELU(approximate="tanh"), _dense(hidden, width, "small")
        )

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn_out(self.value(_modulate(self.norm1(x), shift1, scale1)))
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiTPolicy(nn.Module):
    """Residual policy g(s, z, t): embed concat(s, z) as one token, 3 adaLN blocks, zero head."""

    def __init__(self, obs_dim: int, action_dim: int, config: NetworkConfig) -> None:
        super().__init__()
        width = config.dit_width
        self.embed = _dense(obs_dim + action_dim, width, "small")
        self.position = nn.Parameter(torch.randn(width) * 0.005)
        self.time = TimeEmbedding(width, config.time_frequencies)
        self.blocks = nn.ModuleList(DiTBlock(width, config.dit_mlp_ratio) for _ in range(config.dit_depth))
        self.residual_scale = config.dit_residual_scale
        self.final_modulation = nn.Sequential(nn.SiLU(), _dense(width, 2 * width, "zero"))
        self.final_norm = RMSNorm(width)
        self.head = _dense(width, action_dim, "zero")

    def forward(self, observations: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """t is [B, 1], or [1, 1] for one time shared by every row (the conditioning broadcasts).

        z may be [K, B, d], K inputs per observation (best-of-K candidates): the output is then
        [K, B, d] and the observation's share of the embedding is computed once per state.
        """
        if z.dim() == 3:
            x = shared_observation_linear(self.embed, observations, z) + self.position
        else:
            x = self.embed(torch.cat([observations, z], dim=-1)) + self.position
        c = self.time(t)
        for block in self.blocks:
            # Reference mixing: x + 0.1 (block(x) - x)
            x = x + self.residual_scale * (block(x, c) - x)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return full_precision(self.head, _modulate(self.final_norm(x), shift, scale))


def _run_mlp(net: nn.Sequential, x: Tensor, first: int = 0) -> Tensor:
    """Layers `first`.. as they are (bf16 under autocast), the output layer in float32."""
    for layer in net[first:-1]:
        x = layer(x)
    return full_precision(net[-1], x)


def shared_observation_linear(layer: nn.Linear, observations: Tensor, inputs: Tensor) -> Tensor:
    """`layer(concat(s, x))` for inputs x [K, B, n] that share each observation s [B, o].

    The first layer of concat(s, x) is W_s s + W_x x + b: the observation's share is computed
    once per state instead of once per candidate (K times), and the repeated observations are
    never materialised.
    """
    obs_dim = observations.shape[-1]
    return F.linear(inputs, layer.weight[:, obs_dim:]) + F.linear(
        observations, layer.weight[:, :obs_dim], layer.bias
    )


def _gelu(kind: str) -> nn.GELU:
    """NetworkConfig.gelu: "tanh" (the reference's flax nn.gelu) or "erf" (the exact GELU)."""
    if kind not in GELU_KINDS:
        raise ValueError(f"gelu: expected one of {GELU_KINDS}, got {kind!r}")
    return nn.GELU(approximate="tanh" if kind == "tanh" else "none")


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, zero_head: bool, gelu: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [_dense(in_dim, width, "xavier"), _gelu(gelu)]
        in_dim = width
    layers.append(_dense(in_dim, out_dim, "zero" if zero_head else "xavier"))
    return nn.Sequential(*layers)


class MLPPolicy(nn.Module):
    """g(s, z, t) as an MLP on concat(s, z, t).

    MFQL's residual policy has a zero-initialised head; FQL's BC velocity field is the same
    network with an ordinary head (`zero_head=False`).
    """

    def __init__(self, obs_dim: int, action_dim: int, config: NetworkConfig, zero_head: bool = True) -> None:
        super().__init__()
        self.net = _mlp(obs_dim + action_dim + 1, config.mlp_hidden, action_dim, zero_head, config.gelu)

    def forward(self, observations: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """t is [B, 1], or [1, 1] for one time shared by every row.

        z may be [K, B, d], K inputs per observation (best-of-K candidates): the output is then
        [K, B, d] and the observation's share of the first layer is computed once per state.
        """
        if z.dim() == 3:
            inputs = torch.cat([z, t.expand(*z.shape[:-1], 1)], dim=-1)
            return _run_mlp(self.net, shared_observation_linear(self.net[0], observations, inputs), first=1)
        return _run_mlp(self.net, torch.cat([observations, z, t.expand(z.shape[0], 1)], dim=-1))


class OneStepMLPPolicy(nn.Module):
    """FQL's one-step policy mu(s, z) on concat(s, z); `t` is accepted and ignored so that it
    plugs into the same best-of-K and serving code as MFQL's g(s, z, t = 1)."""

    def __init__(self, obs_dim: int, action_dim: int, config: NetworkConfig) -> None:
        super().__init__()
        self.net = _mlp(
            obs_dim + action_dim, config.mlp_hidden, action_dim, zero_head=False, gelu=config.gelu
        )

    def forward(self, observations: Tensor, z: Tensor, t: Tensor | None = None) -> Tensor:
        """z may be [K, B, d], K inputs per observation (a best-of-K target's candidates), as in
        `MLPPolicy`: the observation's share of the first layer is computed once per state."""
        if z.dim() == 3:
            return _run_mlp(self.net, shared_observation_linear(self.net[0], observations, z), first=1)
        return _run_mlp(self.net, torch.cat([observations, z], dim=-1))


def build_policy(obs_dim: int, action_dim: int, config: NetworkConfig, agent: str = "mfql") -> nn.Module:
    """The network that maps (s, noise) to an action: MFQL's g (DiT or MLP) or a flow-distilled one-step mu."""
    if agent in FLOW_DISTILLED_AGENTS:
        return OneStepMLPPolicy(obs_dim, action_dim, config)
    if config.policy == "dit":
        return DiTPolicy(obs_dim, action_dim, config)
    if config.policy == "mlp":
        return MLPPolicy(obs_dim, action_dim, config)
    raise ValueError(f"unknown policy type {config.policy!r}; expected 'dit' or 'mlp'")


class EnsembleLinear(nn.Module):
    """E independent linear layers evaluated as one batched matmul: [E or 1, B, in] -> [E, B, out]."""

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_dim))
        bound = math.sqrt(6.0 / (in_dim + out_dim))  # Xavier uniform per member
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        # baddbmm fuses the bias add into the batched matmul: on CPU the separate add of a
        # [E, B, out] tensor cost as much as the matmul itself.
        return torch.baddbmm(self.bias, x.expand(self.weight.shape[0], -1, -1), self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with separate affine parameters per ensemble member."""

    def __init__(self, members: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, dim))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        # eps is flax's default; addcmul applies the per-member affine in one pass
        return torch.addcmul(self.bias, F.layer_norm(x, (self.dim,), eps=1e-6), self.weight)


class CriticEnsemble(nn.Module):
    """E MLP critics (Linear -> GELU -> LayerNorm per hidden layer) run as one batched network."""

    def __init__(self, obs_dim: int, action_dim: int, config: NetworkConfig) -> None:
        super().__init__()
        members = config.num_critics
        layers: list[nn.Module] = []
        in_dim = obs_dim + action_dim
        for hidden in config.critic_hidden:
            layers += [
                EnsembleLinear(members, in_dim, hidden),
                _gelu(config.gelu),
                EnsembleLayerNorm(members, hidden),
            ]
            in_dim = hidden
        layers.append(EnsembleLinear(members, in_dim, 1))
        self.net = nn.Sequential(*layers)
        self.members = members

    def forward(self, observations: Tensor, actions: Tensor) -> Tensor:
        """Q values [E, B] for observations [B, obs_dim] and actions [B, action_dim].

        actions may be [K, B, action_dim], K candidates per observation: Q is then [E, K, B],
        and the observation's share of the first layer is computed once per state.
        """
        if actions.dim() == 3:
            return self._candidate_values(observations, actions)
        x = torch.cat([observations, actions], dim=-1).unsqueeze(0)
        return _run_mlp(self.net, x).squeeze(-1)

    def _candidate_values(self, observations: Tensor, actions: Tensor) -> Tensor:
        k, b, action_dim = actions.shape
        first: EnsembleLinear = self.net[0]
        obs_dim = observations.shape[-1]
        members = first.weight.shape[0]
        shared = torch.baddbmm(
            first.bias, observations.expand(members, -1, -1), first.weight[:, :obs_dim]
        )  # [E, B, hidden]
        own = torch.matmul(actions.reshape(1, k * b, action_dim), first.weight[:, obs_dim:])
        x = (own.unflatten(1, (k, b)) + shared.unsqueeze(1)).flatten(1, 2)
        return _run_mlp(self.net, x, first=1).squeeze(-1).unflatten(1, (k, b))
