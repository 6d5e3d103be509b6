"""Step-dependent quantities: the actor learning rate, the cosine alpha schedule, the alpha controller."""

from __future__ import annotations

import math

import pytest
import torch

from training.agents.mfql import Batch, MFQLAgent
from training.config import AgentConfig, NetworkConfig
from training.schedules import AlphaController, actor_learning_rate, cosine_alpha

PEAK = 1e-4


@pytest.mark.parametrize(
    ("update_index", "expected"),
    [
        (0, 0.0),  # the first update of a run with warm-up uses lr 0 (optax's count starts at 0)
        (100, 0.5 * PEAK),  # linear warm-up over 20% of 1000 steps
        (200, PEAK),  # warm-up ends at the peak
        (400, 0.1 * PEAK + 0.9 * PEAK * 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter of the cosine
        (600, 0.1 * PEAK + 0.9 * PEAK * 0.5),  # half-way through the cosine
        (1000, 0.1 * PEAK),  # the cosine ends on the floor
        (1001, 0.1 * PEAK),  # online fine-tuning keeps the floor
        (50_000, 0.1 * PEAK),
    ],
)
def test_actor_learning_rate_warms_up_decays_by_cosine_and_keeps_the_floor(update_index, expected):
    config = AgentConfig(actor_lr=PEAK, actor_warmup_fraction=0.2, actor_min_lr_ratio=0.1)
    assert actor_learning_rate(update_index, 1000, config) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_actor_learning_rate_without_warm_up_starts_at_the_peak_and_is_monotone():
    config = AgentConfig(actor_lr=PEAK, actor_warmup_fraction=0.0, actor_min_lr_ratio=0.2)
    values = [actor_learning_rate(i, 100, config) for i in range(0, 150)]
    assert values[0] == pytest.approx(PEAK)
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))
    assert values[100] == pytest.approx(0.2 * PEAK) and values[-1] == pytest.approx(0.2 * PEAK)


def test_cosine_alpha_decays_from_alpha_to_a_tenth_over_the_offline_steps():
    config = AgentConfig(alpha=300.0, alpha_schedule="cosine")
    assert cosine_alpha(0, 1000, config) == pytest.approx(300.0)
    assert cosine_alpha(500, 1000, config) == pytest.approx(30.0 + 270.0 * 0.5)
    assert cosine_alpha(250, 1000, config) == pytest.approx(30.0 + 270.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_alpha(1000, 1000, config) == pytest.approx(30.0)
    assert cosine_alpha(5000, 1000, config) == pytest.approx(30.0)  # online steps stay at the low end
    controller = AlphaController(config, offline_steps=1000)
    assert controller.value(500) == pytest.approx(165.0)
    assert not any(controller.due(step) for step in range(1, 5001)), "the cosine schedule never records"


def _controller(**overrides) -> AlphaController:
    settings = {"alpha": 10.0, "alpha_update_interval": 100, "alpha_warmup_fraction": 0.1, **overrides}
    return AlphaController(AgentConfig(**settings), offline_steps=1000)


def test_alpha_controller_is_due_every_interval_steps():
    controller = _controller()
    assert [step for step in range(1, 501) if controller.due(step)] == [100, 200, 300, 400, 500]


def test_alpha_controller_only_records_during_warm_up():
    controller = _controller()  # warm-up: the first 10% of 1000 offline steps
    for step in (20, 40):
        controller.record(step, 1.0)
    assert controller.record(99, 1000.0) == 10.0
    assert list(controller.history) == [1.0, 1.0, 1000.0]
    assert controller.record(100, 5000.0) == pytest.approx(12.0)  # 5000 > 5 x mean(1, 1, 1000)


def test_alpha_controller_compares_with_the_average_before_the_loss_joins_it():
    controller = _controller()
    controller.record(100, 1.0)
    assert controller.record(200, 100.0) == 10.0, "one recorded value is not an average yet"
    controller = _controller()
    for step in (100, 200):
        controller.record(step, 1.0)
    # 5.5 > 5 x mean(1, 1): up by 1.2. Had 5.5 joined the window first, the mean would be 2.5.
    assert controller.record(300, 5.5) == pytest.approx(12.0)
    assert list(controller.history) == [1.0, 1.0, 5.5]


def test_alpha_controller_moves_by_its_factors_only_past_the_threshold():
    controller = _controller()
    for step in (100, 200):
        controller.record(step, 2.0)
    assert controller.record(300, 9.9) == 10.0  # < 5 x 2: unchanged
    controller.history.clear()
    controller.history.extend([2.0, 2.0])
    assert controller.record(400, 0.41) == 10.0  # > 2 / 5: unchanged
    controller.history.clear()
    controller.history.extend([2.0, 2.0])
    assert controller.record(500, 0.39) == pytest.approx(8.0)  # < 2 / 5: down by 0.8


def test_alpha_controller_averages_only_the_values_it_recorded():
    # The reference averages a zero-padded window of 20: mean(1, 1, 0 x 18) = 0.1, so a loss of
    # 1.0 would count as 10x the average and raise alpha. Over the recorded values it is steady.
    controller = _controller()
    for step in (100, 200):
        controller.record(step, 1.0)
    assert controller.record(300, 1.0) == 10.0


def test_alpha_controller_window_forgets_old_losses():
    controller = _controller(alpha_window=3)
    for step, loss in zip((10, 20, 30, 40), (100.0, 1.0, 1.0, 1.0), strict=True):  # warm-up: recorded only
        controller.record(step, loss)
    assert list(controller.history) == [1.0, 1.0, 1.0], "the 100 fell out of the window"
    assert controller.record(100, 5.5) == pytest.approx(12.0)


def test_alpha_controller_stays_within_a_tenth_and_ten_times_the_initial_alpha():
    controller = _controller(alpha_threshold=1.0)
    for step in (100, 200):
        controller.record(step, 1.0)
    for i in range(40):  # ever-growing losses: x1.2 each time until the cap
        controller.record(300 + 100 * i, 10.0 ** (i + 1))
    assert controller.alpha == pytest.approx(100.0)
    controller = _controller(alpha_threshold=1.0)
    for step in (100, 200):
        controller.record(step, 1.0)
    for i in range(40):
        controller.record(300 + 100 * i, 10.0 ** -(i + 1))
    assert controller.alpha == pytest.approx(1.0)


def test_alpha_controller_state_round_trips():
    controller = _controller(alpha_threshold=1.0)
    for step, loss in zip((100, 200, 300), (1.0, 1.0, 3.0), strict=True):
        controller.record(step, loss)
    restored = _controller(alpha_threshold=1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.alpha == controller.alpha == pytest.approx(12.0)
    assert list(restored.history) == list(controller.history)
    assert restored.record(400, 0.1) == controller.record(400, 0.1)


def _batch(generator: torch.Generator, n: int = 16) -> Batch:
    observations = torch.randn(n, 3, generator=generator)
    return Batch(
        observations,
        torch.rand(n, 2, generator=generator) * 2 - 1,
        -torch.ones(n),
        torch.ones(n),
        torch.randn(n, 3, generator=generator),
    )


def test_mfql_update_applies_the_scheduled_actor_lr_and_the_controller_alpha():
    config = AgentConfig(
        alpha=2.0,
        alpha_update_interval=2,
        alpha_warmup_fraction=0.0,
        alpha_threshold=1.0,  # any change of the MFI loss moves alpha
        actor_lr=1e-3,
        actor_warmup_fraction=0.2,
    )
    network = NetworkConfig(policy="mlp", mlp_hidden=(16, 16), critic_hidden=(16, 16))
    agent = MFQLAgent(3, 2, config, network, offline_steps=10, seed=0)
    generator = torch.Generator().manual_seed(0)
    infos = [agent.update(_batch(generator), step) for step in range(1, 15)]
    for step, info in enumerate(infos, start=1):
        assert info["actor/lr"] == pytest.approx(actor_learning_rate(step - 1, 10, config)), step
    assert agent.actor_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # the floor, online
    assert agent.critic_optimizer.param_groups[0]["lr"] == config.critic_lr
    alphas = [info["alpha"] for info in infos]
    assert alphas[:5] == [2.0] * 5, "two recorded losses are needed before alpha moves"
    assert len(set(alphas)) > 2, f"the controller never acted: {alphas}"
    for step in range(3, 15, 2):  # alpha moves only on due (even) steps
        assert alphas[step - 1] == alphas[step - 2], step
    assert list(agent.alpha_controller.history) == pytest.approx(
        [info["mfi/loss"] for info in infos[1::2]], rel=1e-6
    )
