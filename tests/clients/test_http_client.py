"""PolicyClient / AsyncPolicyClient against a real mfql-serve: REST and Open Inference Protocol v2."""

from __future__ import annotations

import numpy as np
import pytest

from clients import (
    AsyncPolicyClient,
    InvalidInput,
    ModelNotFound,
    PolicyClient,
    RemotePolicy,
    Unauthorized,
)
from tests.clients.live_server import API_KEY, CUBE, CUBE_ACTION_DIM, CUBE_OBS_DIM

OBSERVATIONS = np.random.default_rng(0).standard_normal((3, CUBE_OBS_DIM)).astype(np.float32)


@pytest.mark.parametrize("protocol", ["rest", "v2"])
def test_act_and_act_batch_return_actions_in_bounds(server_url, protocol):
    with PolicyClient(server_url, CUBE, protocol=protocol) as client:
        action = client.act(OBSERVATIONS[0])
        actions = client.act_batch(OBSERVATIONS, num_candidates=4)
    assert action.shape == (CUBE_ACTION_DIM,) and action.dtype == np.float32
    assert actions.shape == (3, CUBE_ACTION_DIM)
    assert np.all(np.abs(actions) <= 1.0)


@pytest.mark.parametrize("protocol", ["rest", "v2"])
def test_metadata_and_health(server_url, protocol):
    with PolicyClient(server_url, CUBE, protocol=protocol) as client:
        client.wait_until_ready(timeout=5.0)
        metadata = client.metadata()
        assert client.health() is True
    assert (metadata.name, metadata.obs_dim, metadata.action_dim) == (CUBE, CUBE_OBS_DIM, CUBE_ACTION_DIM)
    assert "1" in metadata.versions


def test_rest_metadata_has_bounds_and_candidate_limits(server_url):
    with PolicyClient(server_url, CUBE) as client:
        metadata = client.metadata()
    np.testing.assert_array_equal(metadata.action_low, -np.ones(CUBE_ACTION_DIM))
    np.testing.assert_array_equal(metadata.action_high, np.ones(CUBE_ACTION_DIM))
    assert (metadata.default_num_candidates, metadata.max_num_candidates) == (1, 8)


def test_default_model_is_used_without_a_model_name(server_url):
    with PolicyClient(server_url) as client:
        assert client.metadata().name == CUBE
        assert client.act(OBSERVATIONS[0]).shape == (CUBE_ACTION_DIM,)


@pytest.mark.parametrize("protocol", ["rest", "v2"])
def test_same_seed_replays_the_same_action_and_answer_reports_it(server_url, protocol):
    with PolicyClient(server_url, CUBE, protocol=protocol) as client:
        first = client.infer(OBSERVATIONS[0], num_candidates=4, seed=123)
        again = client.infer(OBSERVATIONS[0], num_candidates=4, seed=123)
    np.testing.assert_array_equal(first.actions, again.actions)
    assert first.q_values.shape == (1,)
    assert (first.num_candidates, first.seed) == (4, 123)


async def test_async_client_acts_over_rest_and_v2(server_url):
    for protocol in ("rest", "v2"):
        async with AsyncPolicyClient(server_url, CUBE, protocol=protocol) as client:
            assert (await client.metadata()).obs_dim == CUBE_OBS_DIM
            assert (await client.act(OBSERVATIONS[0])).shape == (CUBE_ACTION_DIM,)
            assert (await client.act_batch(OBSERVATIONS)).shape == (3, CUBE_ACTION_DIM)
            assert await client.health() is True


@pytest.mark.parametrize("protocol", ["rest", "v2"])
def test_unknown_model_raises_model_not_found(server_url, protocol):
    with PolicyClient(server_url, "no-such-model", protocol=protocol) as client, pytest.raises(ModelNotFound):
        client.act(OBSERVATIONS[0])


@pytest.mark.parametrize("protocol", ["rest", "v2"])
def test_server_refusals_carry_the_field_name(server_url, protocol):
    with PolicyClient(server_url, CUBE, protocol=protocol) as client:
        with pytest.raises(InvalidInput, match="observation") as wrong_size:
            client.act(np.zeros(CUBE_OBS_DIM + 1))  # bypasses RemotePolicy: the server must refuse it
        with pytest.raises(InvalidInput, match="num_candidates") as too_many:
            client.act(OBSERVATIONS[0], num_candidates=1000)
    assert wrong_size.value.status in (400, 422) and too_many.value.status in (400, 422)


def test_remote_policy_catches_dimension_mismatch_before_sending(server_url):
    with PolicyClient(server_url, CUBE) as client:
        policy = RemotePolicy(client)
        with pytest.raises(InvalidInput, match=f"expects obs_dim={CUBE_OBS_DIM}"):
            policy(np.zeros(CUBE_OBS_DIM - 1))
        assert policy.steps == 0
        assert policy(OBSERVATIONS[0]).shape == (CUBE_ACTION_DIM,)


@pytest.mark.parametrize("protocol", ["rest", "v2"])
def test_wrong_api_key_raises_unauthorized_with_the_servers_message(secured_server_url, protocol):
    client = PolicyClient(secured_server_url, CUBE, protocol=protocol, api_key="wrong")
    with client, pytest.raises(Unauthorized) as caught:
        client.act(OBSERVATIONS[0])
    assert caught.value.status == 401 and caught.value.message
    with PolicyClient(secured_server_url, CUBE, protocol=protocol, api_key=API_KEY) as client:
        assert client.act(OBSERVATIONS[0]).shape == (CUBE_ACTION_DIM,)
