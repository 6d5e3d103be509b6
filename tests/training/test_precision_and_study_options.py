"""Mixed precision (--precision) and the study options (--mfi-draws, --actor-lr-schedule,
--schedule-steps): each changes only what it says, and the fp32 paper setting stays exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from training.agents import build_agent
from training.agents.common import Batch
from training.agents.mfql import mean_flow_identity_loss
from training.config import AgentConfig, NetworkConfig, resolve_agent_config
from training.data.ogbench_files import ACTION_CLIP, OfflineDataset, _as_offline, observation_statistics
from training.networks import CriticEnsemble, build_policy
from training.precision import cpu_bf16_flags, matmul_autocast, resolve_precision
from training.schedules import actor_learning_rate, schedule_horizon

TASK = "cube-single-play-singletask-task2-v0"
SMALL = NetworkConfig(policy="mlp", mlp_hidden=(32, 32), critic_hidden=(32, 32))


def make_batch(b: int = 16, obs_dim: int = 6, action_dim: int = 3, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        observations=torch.randn(b, obs_dim, generator=g),
        actions=torch.rand(b, action_dim, generator=g) * 2 - 1,
        rewards=-torch.randint(0, 2, (b,), generator=g).float(),
        masks=torch.ones(b),
        next_observations=torch.randn(b, obs_dim, generator=g),
    )


# --- precision selection -------------------------------------------------------------------


def test_cpu_bf16_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpu_bf16_flags(cpuinfo) == ["avx512_bf16"]
    cpuinfo.write_text("flags\t\t: fpu sse avx2\n")
    assert cpu_bf16_flags(cpuinfo) == []
    assert cpu_bf16_flags(tmp_path / "missing") == []


def test_auto_precision_follows_the_hardware(monkeypatch):
    import training.precision as precision

    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    assert resolve_precision("auto") == ("bf16" if torch.backends.mkldnn.is_available() else "fp32")
    with pytest.raises(ValueError, match="expected 'fp32', 'bf16' or 'auto'"):
        resolve_precision("fp16")


# --- bf16 forward passes -------------------------------------------------------------------


@pytest.mark.parametrize("policy_type", ["dit", "mlp"])
def test_networks_return_float32_under_bf16_autocast(policy_type):
    torch.manual_seed(0)
    network = dataclasses.replace(SMALL, policy=policy_type, dit_width=32, dit_depth=1, time_frequencies=16)
    policy = build_policy(6, 3, network)
    for p in policy.parameters():  # zero-initialised heads would hide rounding
        torch.nn.init.normal_(p, std=0.3)
    critic = CriticEnsemble(6, 3, network)
    s, z, t = torch.randn(8, 6), torch.randn(8, 3), torch.rand(8, 1)
    with matmul_autocast("bf16"):
        g, q = policy(s, z, t), critic(s, z)
    assert g.dtype == torch.float32 and q.dtype == torch.float32
    g32, q32 = policy(s, z, t), critic(s, z)
    assert not torch.equal(g, g32)  # the hidden layers did run in bf16 ...
    torch.testing.assert_close(g, g32, rtol=0.05, atol=0.05)  # ... to bf16's accuracy
    torch.testing.assert_close(q, q32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("agent_name", ["mfql", "fql"])
def test_bf16_update_keeps_float32_state_and_close_losses(agent_name):
    config = resolve_agent_config(TASK, "reference", agent=agent_name)
    batch = make_batch()
    infos = {}
    for precision in ("fp32", "bf16"):
        agent = build_agent(agent_name, 6, 3, config, SMALL, 100, seed=0, precision=precision)
        infos[precision] = agent.update(batch, 1)
        for optimizer in agent.optimizers().values():
            for state in optimizer.state.values():
                assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
        for module in agent.modules().values():
            assert all(p.dtype == torch.float32 for p in module.parameters())
    for key in ("critic/loss", "actor/q"):
        assert infos["bf16"][key] == pytest.approx(infos["fp32"][key], rel=0.05, abs=0.02)


# --- MFI draws ---------------------------------------------------------------------------------


def test_mfi_draws_average_the_single_draw_losses():
    torch.manual_seed(0)
    policy = build_policy(6, 3, SMALL)
    for p in policy.parameters():
        torch.nn.init.normal_(p, std=0.3)
    batch, config, m = make_batch(), AgentConfig(mfi_draws=3), 3
    noise, t = torch.randn(m * 16, 3), torch.rand(m * 16, 1)
    together, _ = mean_flow_identity_loss(policy, batch, noise, t, config)
    separate = [
        mean_flow_identity_loss(
            policy, batch, noise[i * 16 : (i + 1) * 16], t[i * 16 : (i + 1) * 16], config
        )[0]
        for i in range(m)
    ]
    torch.testing.assert_close(together, torch.stack(separate).mean())


def test_one_mfi_draw_is_the_paper_update_exactly():
    config = resolve_agent_config(TASK, "reference")
    batch = make_batch()
    runs = []
    for draws in (None, 1):
        cfg = config if draws is None else dataclasses.replace(config, mfi_draws=draws)
        agent = build_agent("mfql", 6, 3, cfg, SMALL, 100, seed=0)
        runs.append([agent.update(batch, step)["mfi/loss"] for step in range(1, 4)])
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="mfi_draws must be >= 1"):
        AgentConfig(mfi_draws=0)


# --- actor learning-rate options -----------------------------------------------------------


def test_constant_actor_lr_is_constant_through_warmup_and_online():
    config = AgentConfig(actor_lr=3e-4, actor_lr_schedule="constant")
    assert {actor_learning_rate(i, 1000, config) for i in (0, 10, 500, 1000, 5000)} == {3e-4}


def test_schedule_steps_stretch_the_reference_schedule():
    stretched = AgentConfig(actor_lr=1e-4, schedule_steps=1_000_000)
    horizon = schedule_horizon(30_000, stretched)
    assert horizon == 1_000_000
    # warm-up is 5 % of 1M = 50k steps: at step 25k the lr is half its peak
    assert actor_learning_rate(25_000, horizon, stretched) == pytest.approx(0.5e-4)
    assert schedule_horizon(30_000, AgentConfig()) == 30_000
    agent = build_agent("mfql", 6, 3, stretched, SMALL, 30_000, seed=0)
    assert agent.alpha_controller.offline_steps == 1_000_000  # alpha's warm-up is stretched too


# --- ALGORITHM.md's data details -----------------------------------------------------------


def test_constant_observation_dimension_gets_std_one_and_actions_are_clipped():
    observations = np.stack([np.arange(10.0), np.full(10, 3.0)], axis=1).astype(np.float32)
    dataset = OfflineDataset(
        observations=observations,
        actions=np.zeros((10, 1), np.float32),
        rewards=np.zeros(10, np.float32),
        masks=np.ones(10, np.float32),
        terminals=np.zeros(10, np.float32),
        next_observations=observations,
        source="test",
    )
    mean, std = observation_statistics(dataset)
    assert std[1] == 1.0 and mean[1] == pytest.approx(3.0)
    assert std[0] == pytest.approx(np.arange(10.0).std())
    split = {key: getattr(dataset, key) for key in ("observations", "rewards", "masks", "terminals")}
    split |= {"actions": np.array([[1.0], [-1.0], [0.5]] * 3 + [[0.0]], np.float32)}
    split["next_observations"] = observations
    clipped = _as_offline(split, source="test").actions
    assert clipped.max() == np.float32(ACTION_CLIP) and clipped.min() == np.float32(-ACTION_CLIP)
    assert clipped[2, 0] == 0.5


# --- torch.compile ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("agent_name", "policy_type"), [("mfql", "dit"), ("mfql", "mlp"), ("fql", "mlp")])
def test_compiled_update_matches_the_eager_one(agent_name, policy_type):
    """--compile changes speed, not the maths: same losses and weights after a few steps
    (from the zero-initialised heads and adaLN layers on, as a real run starts)."""
    config = resolve_agent_config(TASK, "reference", agent=agent_name)
    network = dataclasses.replace(SMALL, policy=policy_type, dit_width=32, dit_depth=1, time_frequencies=16)
    batches = [make_batch(seed=i) for i in range(3)]
    agents = [build_agent(agent_name, 6, 3, config, network, 100, seed=0, compile=c) for c in (False, True)]
    for step, batch in enumerate(batches, start=1):
        eager, compiled = (agent.update(batch, step) for agent in agents)
        for key, value in eager.items():
            assert compiled[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    for (name, eager_p), compiled_p in zip(
        agents[0].policy.named_parameters(), agents[1].policy.parameters(), strict=True
    ):
        torch.testing.assert_close(compiled_p, eager_p, rtol=1e-4, atol=1e-5, msg=name)
