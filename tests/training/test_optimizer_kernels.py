"""The fused Adam and multi-tensor EMA are the same maths as the plain per-parameter loops."""

from __future__ import annotations

import copy

import torch
from torch import nn

from training.agents.common import adam, ema_update, load_optimizer_state


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))


def _train(optimizer_net: tuple[torch.optim.Optimizer, nn.Module], steps: int, lr: float) -> None:
    optimizer, net = optimizer_net
    generator = torch.Generator().manual_seed(3)
    for step in range(steps):
        x = torch.randn(32, 7, generator=generator)
        loss = net(x).pow(2).mean() + 0.1 * step * net(x).mean()
        optimizer.zero_grad()
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 + step)  # the trainer changes lr every step
        optimizer.step()


def test_fused_adam_matches_the_default_update():
    plain, fused = _net(0), _net(0)
    reference = torch.optim.Adam(plain.parameters(), lr=1e-3)
    optimizer = adam(fused.parameters(), lr=1e-3)
    assert optimizer.param_groups[0]["fused"] is True  # CPU builds of torch >= 2.4 have the kernel
    _train((reference, plain), 20, 1e-3)
    _train((optimizer, fused), 20, 1e-3)
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = sum((a - b).abs().sum() for a, b in zip(plain.parameters(), _net(0).parameters(), strict=True))
    assert moved > 1e-2  # the comparison is not between two untouched networks


def test_loading_a_plain_optimizer_state_keeps_the_fused_kernel_and_the_moments():
    plain = _net(0)
    reference = torch.optim.Adam(plain.parameters(), lr=1e-3)
    _train((reference, plain), 5, 1e-3)
    saved = copy.deepcopy(reference.state_dict())
    assert saved["param_groups"][0]["fused"] is None

    resumed = copy.deepcopy(plain)
    optimizer = adam(resumed.parameters(), lr=1e-3)
    load_optimizer_state(optimizer, saved)
    assert optimizer.param_groups[0]["fused"] is True
    first = next(iter(optimizer.state.values()))
    torch.testing.assert_close(first["exp_avg"], next(iter(reference.state.values()))["exp_avg"])

    _train((reference, plain), 5, 1e-3)
    _train((optimizer, resumed), 5, 1e-3)
    for a, b in zip(plain.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ema_update_is_the_per_parameter_lerp():
    target, online = _net(1), _net(2)
    expected = [t + 0.005 * (o - t) for t, o in zip(target.parameters(), online.parameters(), strict=True)]
    ema_update(target, online, 0.005)
    for got, want in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want)
    shorter = nn.Sequential(nn.Linear(7, 16))
    try:
        ema_update(shorter, online, 0.005)
    except ValueError as exc:
        assert "parameters" in str(exc)
    else:
        raise AssertionError("mismatched networks must be refused")
