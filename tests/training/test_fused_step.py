"""The fused update (training.agents.fused_step) is the eager update's maths: same losses,
weights, Adam state, target critic and alpha after a few steps, for MFQL and FQL, chunked or
not, with the alpha controller adapting inside the graph."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.training.test_precision_and_study_options import make_batch
from training.agents import build_agent
from training.agents.fused_step import FusedUpdate, adam_step_, clip_by_total_norm_
from training.config import NetworkConfig, resolve_agent_config
from training.schedules import AlphaController, adapted_alpha

TASK = "cube-single-play-singletask-task2-v0"
SMALL = NetworkConfig(policy="mlp", mlp_hidden=(32, 32), critic_hidden=(32, 32))


def assert_same_agents(eager, fused, rtol=1e-5, atol=1e-6) -> None:
    for name, module in eager.modules().items():
        for (key, a), b in zip(
            module.state_dict().items(), fused.modules()[name].state_dict().values(), strict=True
        ):
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=f"{name}.{key}")
    for name, optimizer in eager.optimizers().items():
        other = fused.optimizers()[name]
        for p, q in zip(
            (p for g in optimizer.param_groups for p in g["params"]),
            (q for g in other.param_groups for q in g["params"]),
            strict=True,
        ):
            for key in ("step", "exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(other.state[q][key], optimizer.state[p][key], rtol=rtol, atol=atol)
        assert other.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


def agent_pair(agent_name: str, policy: str = "mlp", **overrides):
    config = dataclasses.replace(resolve_agent_config(TASK, "reference", agent=agent_name), **overrides)
    network = dataclasses.replace(SMALL, policy=policy, dit_width=32, dit_depth=1, time_frequencies=16)
    return [build_agent(agent_name, 6, 3, config, network, 100, seed=0) for _ in range(2)]


@pytest.mark.parametrize(
    ("agent_name", "policy", "overrides"),
    [
        ("mfql", "mlp", {}),
        ("mfql", "dit", {}),
        ("fql", "mlp", {}),
        ("mfql", "mlp", {"action_horizon": 3, "policy_ema_rate": 0.1}),
        ("fql", "mlp", {"action_horizon": 2, "policy_ema_rate": 0.1}),
        ("mfql", "mlp", {"mfi_draws": 2, "anchor_weight": 10.0, "actor_lr_schedule": "constant"}),
        ("mfql", "mlp", {"action_horizon": 2, "renoise_time": 0.3, "renoise_target": True}),
    ],
)
def test_fused_update_matches_the_eager_one(agent_name, policy, overrides):
    eager, fused = agent_pair(agent_name, policy, **overrides)
    step_fn = FusedUpdate(fused, compile=False)
    chunk = 3 * overrides.get("action_horizon", 1)
    for step in range(1, 6):
        batch = make_batch(action_dim=chunk, seed=step)
        expected, got = eager.update(batch, step), step_fn(batch, step)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert_same_agents(eager, fused)
    # The random streams moved in step: the next draws are the same.
    assert torch.equal(torch.randn(4, generator=eager.generator), torch.randn(4, generator=fused.generator))


def test_fused_alpha_controller_adapts_as_the_eager_one():
    """Records every step from step 3 on (warm-up 10% of 20 steps): alpha moves in both paths alike."""
    overrides = {"alpha_update_interval": 1, "alpha_threshold": 1.01, "alpha_window": 3}
    config = dataclasses.replace(resolve_agent_config(TASK, "reference", agent="mfql"), **overrides)
    agents = [build_agent("mfql", 6, 3, config, SMALL, 20, seed=1) for _ in range(2)]
    step_fn = FusedUpdate(agents[1], compile=False)
    alphas = []
    for step in range(1, 13):
        batch = make_batch(seed=step)
        expected, got = agents[0].update(batch, step), step_fn(batch, step)
        assert got["alpha"] == pytest.approx(expected["alpha"], rel=1e-12)
        alphas.append(expected["alpha"])
    assert len(set(alphas)) > 2, f"the controller never adapted: {alphas}"
    expected, got = (agent.alpha_controller.state_dict() for agent in agents)
    assert got["alpha"] == pytest.approx(expected["alpha"], rel=1e-12)
    assert got["history"] == pytest.approx(expected["history"], rel=1e-5)


@pytest.mark.parametrize(("loss", "expected"), [(10.0, 360.0), (0.05, 240.0), (1.0, 300.0)])
def test_adapted_alpha_against_hand_values(loss, expected):
    """Average of (1, 1) = 1, threshold 5: 10 > 5 raises x1.2, 0.05 < 0.2 lowers x0.8, 1 keeps."""
    config = resolve_agent_config(TASK, "reference", agent="mfql")
    controller = AlphaController(config, offline_steps=10)
    controller.history.extend([1.0, 1.0])
    state = controller.tensor_state(config.alpha_update_interval)
    assert float(adapted_alpha(state, torch.tensor(loss), config)) == pytest.approx(expected)
    assert controller.record(config.alpha_update_interval, loss) == pytest.approx(expected)


def test_adam_step_and_clipping_match_torch():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 4, generator=g), torch.randn(3, generator=g)]
    reference = [p.clone().requires_grad_(True) for p in params]
    optimizer = torch.optim.Adam(reference, lr=1e-2)
    state = (
        [torch.zeros(()) for _ in params],
        [torch.zeros_like(p) for p in params],
        [torch.zeros_like(p) for p in params],
    )
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) * 10 for p in params]
        for p, grad in zip(reference, grads, strict=True):
            p.grad = grad.clone()
        expected_norm = torch.nn.utils.clip_grad_norm_(reference, 1.0)
        optimizer.step()
        norm = clip_by_total_norm_(grads, 1.0)
        adam_step_(params, grads, state, torch.tensor(1e-2), (0.9, 0.999, 1e-8))
        torch.testing.assert_close(norm, expected_norm)
        for p, q in zip(params, reference, strict=True):
            torch.testing.assert_close(p, q.detach())


@pytest.mark.slow
@pytest.mark.parametrize("agent_name", ["mfql", "fql"])
def test_compiled_fused_update_matches_the_eager_one(agent_name):
    """The compiled program (--compile) is the same maths as the eager step."""
    eager, fused = agent_pair(agent_name)
    step_fn = FusedUpdate(fused, compile=True)
    for step in range(1, 4):
        batch = make_batch(seed=step)
        expected, got = eager.update(batch, step), step_fn(batch, step)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert_same_agents(eager, fused, rtol=1e-4, atol=1e-5)


def test_compile_auto_compiles_long_small_mlp_runs_where_a_compiler_exists(monkeypatch):
    import training.train as train

    small = NetworkConfig(policy="mlp", mlp_hidden=(256,) * 4, critic_hidden=(256,) * 4)
    long = train.COMPILE_MIN_STEPS
    assert train.resolve_compile("on", 10, small) and not train.resolve_compile("off", 10**6, small)
    assert not train.resolve_compile("auto", long - 1, small)
    monkeypatch.setattr(train.shutil, "which", lambda name: "/usr/bin/" + name)
    assert train.resolve_compile("auto", long, small)
    assert train.resolve_compile(
        "auto", long, dataclasses.replace(small, policy="dit"), agent="fql"
    )  # FQL: MLPs
    # where it did not pay: the DiT, networks of 512
    assert not train.resolve_compile("auto", long, dataclasses.replace(small, policy="dit"))
    assert not train.resolve_compile("auto", long, dataclasses.replace(small, critic_hidden=(512,) * 4))
    monkeypatch.setattr(train.shutil, "which", lambda name: None)
    assert not train.resolve_compile("auto", 10**6, small)  # no C++ compiler: torch.compile would fail
    parser = train.build_parser()
    required = ["--env", TASK, "--dataset-dir", "d", "--out", "o"]
    assert parser.parse_args(required).compile == "auto"
    assert parser.parse_args([*required, "--compile"]).compile == "on"  # the bare flag, as before
    assert parser.parse_args([*required, "--compile", "off"]).compile == "off"


def test_a_failed_compile_falls_back_to_the_eager_step_with_a_warning(monkeypatch):
    """The same step's inputs (noise already drawn) go to the eager function: same maths, no state lost."""
    eager, fused = agent_pair("fql")
    step_fn = FusedUpdate(fused, compile=False)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    step_fn._step = broken  # what a compile that fails at its first call looks like
    batch = make_batch(seed=1)
    expected = eager.update(batch, 1)
    with pytest.warns(UserWarning, match="training eagerly"):
        got = step_fn(batch, 1)
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert_same_agents(eager, fused)


def test_a_compiled_agent_builds_its_step_after_a_resume_restored_its_state(monkeypatch):
    """The fused step holds the Adam state's tensors, which `load_state_dict` replaces: an agent
    with --compile builds it at its first update, so a resumed run continues exactly."""
    from training.agents.common import load_optimizer_state

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the same path, uncompiled
    straight, first = agent_pair("mfql")
    resumed = agent_pair("mfql")[0]
    for agent in (straight, first, resumed):
        agent.compile = True
    for step in (1, 2):
        straight.update(make_batch(seed=step), step)
        first.update(make_batch(seed=step), step)
    for name, module in first.modules().items():
        resumed.modules()[name].load_state_dict(module.state_dict())
    for name, optimizer in first.optimizers().items():
        load_optimizer_state(resumed.optimizers()[name], optimizer.state_dict())
    resumed.load_extra_state(first.extra_state())
    resumed.generator.set_state(first.generator.get_state())
    for step in (3, 4):
        expected, got = (
            straight.update(make_batch(seed=step), step),
            resumed.update(make_batch(seed=step), step),
        )
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert_same_agents(straight, resumed)
