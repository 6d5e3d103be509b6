"""RemotePolicy executes a chunked model's chunks one action per call, against the scripted stub.

Chunk number i's step j is the action [i, j / 4] (``chunk_actions``), so every returned
action says which request it came from and where in the chunk it sits.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from clients import PolicyClient, RemotePolicy, ServerError
from clients.rollout import SEED_RANGE, run_episodes
from tests.clients.stub_server import (
    ACT_OK,
    CHUNK_HORIZON,
    CHUNKED_METADATA,
    Answer,
    StubServer,
    chunk_actions,
    chunk_answer,
)

OBSERVATION = np.zeros(3, np.float32)


@contextlib.contextmanager
def chunked_policy(*answers: Answer, metadata: dict = CHUNKED_METADATA, **options):
    answers = answers or tuple(chunk_answer(i) for i in range(10))
    with StubServer(list(answers), metadata) as stub, PolicyClient(stub.url, metadata["name"]) as client:
        yield stub, RemotePolicy(client, **options)


def served(chunk: int, step: int) -> list[float]:
    return chunk_actions(chunk)[step]


def test_one_request_per_chunk_and_one_action_per_call_in_chunk_order():
    with chunked_policy() as (stub, policy):
        actions = [policy(OBSERVATION, seed=100 + step).tolist() for step in range(7)]
    assert policy.action_horizon == policy.replan_every == CHUNK_HORIZON
    assert actions == [served(chunk, step) for chunk in range(3) for step in range(3)][:7]
    # steps 0, 3 and 6 asked the server, each with the seed of its own call; the others sent nothing
    assert [request.body["seed"] for request in stub.act_requests] == [100, 103, 106]
    assert (policy.steps, policy.requests, policy.steps_from_chunk) == (7, 3, 4)


def test_needs_request_says_which_calls_ask_the_server():
    with chunked_policy() as (stub, policy):
        asked = []
        for _ in range(6):
            asked.append(policy.needs_request)
            policy(OBSERVATION)
    assert asked == [True, False, False, True, False, False]
    assert len(stub.act_requests) == 2


def test_replan_every_below_the_horizon_executes_that_many_actions_then_asks_again():
    with chunked_policy(replan_every=2) as (stub, policy):
        actions = [policy(OBSERVATION).tolist() for _ in range(5)]
    assert actions == [served(0, 0), served(0, 1), served(1, 0), served(1, 1), served(2, 0)]
    assert len(stub.act_requests) == 3


def test_replan_every_one_asks_every_step_and_uses_each_chunks_first_action():
    with chunked_policy(replan_every=1) as (stub, policy):
        actions = [policy(OBSERVATION).tolist() for _ in range(3)]
    assert actions == [served(0, 0), served(1, 0), served(2, 0)]
    assert len(stub.act_requests) == 3


def test_reset_drops_the_rest_of_the_chunk():
    with chunked_policy() as (stub, policy):
        first = policy(OBSERVATION).tolist()
        policy.reset()
        assert policy.needs_request
        after_reset = [policy(OBSERVATION).tolist() for _ in range(2)]
    assert first == served(0, 0)
    assert after_reset == [served(1, 0), served(1, 1)]
    assert len(stub.act_requests) == 2


@pytest.mark.parametrize("replan_every", [0, CHUNK_HORIZON + 1])
def test_replan_every_outside_one_to_the_horizon_is_refused_with_both_values(replan_every):
    expected = rf"between 1 and model 'chunked'\'s action horizon {CHUNK_HORIZON}; got {replan_every}"
    with pytest.raises(ValueError, match=expected), chunked_policy(replan_every=replan_every):
        pass


def test_model_of_horizon_one_is_asked_every_step_as_before():
    with chunked_policy(Answer(), metadata=CHUNKED_METADATA | {"action_horizon": 1}) as (stub, policy):
        actions = [policy(OBSERVATION, seed=step).tolist() for step in range(3)]
        with pytest.raises(ValueError, match="action horizon 1; got 2"):
            RemotePolicy(policy.client, replan_every=2)
    assert actions == [ACT_OK["action"]] * 3
    assert [request.body["seed"] for request in stub.act_requests] == [0, 1, 2]
    assert (policy.action_horizon, policy.replan_every, policy.steps_from_chunk) == (1, 1, 0)


def test_answer_whose_chunk_length_differs_from_the_models_horizon_raises_server_error():
    short = Answer(body={**ACT_OK, "action": chunk_actions(0, horizon=2)})
    with chunked_policy(short) as (_, policy), pytest.raises(ServerError, match=r"expected \(3, 2\)"):
        policy(OBSERVATION)


def test_missed_replan_falls_back_on_the_chunks_next_planned_action():
    late = Answer(body=chunk_answer(9).body, delay=2.0)
    with chunked_policy(chunk_answer(0), late, control_period=0.2, replan_every=1) as (stub, policy):
        actions = [policy(OBSERVATION).tolist() for _ in range(4)]
    # the replans after step 0 all come too late: the first chunk is played out, then its last action held
    assert actions == [served(0, 0), served(0, 1), served(0, 2), served(0, 2)]
    assert (policy.requests, policy.misses) == (4, 3)


class FixedLengthEnv:
    """Episodes of ``length`` steps with zero observations and reward 1 per step."""

    def __init__(self, length: int):
        self.length, self.t = length, 0

    def reset(self, seed=None):
        self.t = 0
        return OBSERVATION, {"success": False}

    def step(self, action):
        self.t += 1
        return OBSERVATION, 1.0, False, self.t >= self.length, {"success": True}


def test_rollout_report_separates_chunk_requests_from_steps_served_from_the_chunk():
    with chunked_policy() as (stub, policy):
        report = run_episodes(policy, FixedLengthEnv(length=5), episodes=2, seed=4)
    # each 5-step episode: a chunk at steps 0 and 3 (the second chunk cut short by the episode's end)
    assert (report["action_horizon"], report["replan_every"]) == (CHUNK_HORIZON, CHUNK_HORIZON)
    assert (report["steps"], report["requests"], report["steps_from_chunk"]) == (10, 4, 6)
    assert report["request_latency_ms"]["count"] == 4 and report["step_latency_ms"]["count"] == 6
    assert report["control_latency_ms"]["count"] == 10
    assert {"p50", "p99"} <= set(report["request_latency_ms"]) & set(report["step_latency_ms"])
    assert (report["success_rate"], report["mean_episode_length"], report["misses"]) == (1.0, 5.0, 0)
    # episode i's requests carry the first draws of default_rng(seed + i): one per request, not per step
    draws = [np.random.default_rng(episode) for episode in (4, 5)]
    expected = [int(rng.integers(SEED_RANGE)) for rng in draws for _ in range(2)]
    assert [request.body["seed"] for request in stub.act_requests] == expected


def test_rollout_report_of_a_horizon_one_model_has_every_step_a_request():
    with chunked_policy(Answer(), metadata=CHUNKED_METADATA | {"action_horizon": 1}) as (_, policy):
        report = run_episodes(policy, FixedLengthEnv(length=4), episodes=1, seed=0)
    assert (report["requests"], report["steps_from_chunk"], report["step_latency_ms"]["count"]) == (4, 0, 0)
    assert report["step_latency_ms"]["p50"] is None
