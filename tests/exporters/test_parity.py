"""Export does not change the model: ONNX Runtime and TorchScript match eager PyTorch to 1e-5.

Parametrised over B in {1, 7, 256} and K in {1, 5, 32}, for the reference-size DiT and the
MLP policy, and for chunked (H = 5) small MLP and DiT policies, with observations at the
scale of the checkpoint's dataset statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporters.bundle import ONNX_FILE, OUTPUT_NAMES, TORCHSCRIPT_FILE
from exporters.runtimes import OnnxRuntimePolicy, TorchScriptPolicy

ATOL = 1e-5  # the brief: float32 parity to 1e-5 absolute, nothing relative
BATCH_SIZES = (1, 7, 256)
CANDIDATE_COUNTS = (1, 5, 32)


MODELS = ("mlp", "dit", "chunked-mlp", "chunked-dit")


@pytest.fixture(scope="module")
def runtimes(mlp_export, dit_export, chunked_mlp_export, chunked_dit_export) -> dict:
    """(model, runtime name) -> (runtime, eager module, obs mean, obs std)."""
    table = {}
    exports = (mlp_export, dit_export, chunked_mlp_export, chunked_dit_export)
    for model, exported in zip(MODELS, exports, strict=True):
        normalizer = exported.eager.normalizer
        stats = (normalizer.mean.numpy(), normalizer.std.numpy())
        table[model, "onnxruntime"] = (OnnxRuntimePolicy(exported.bundle / ONNX_FILE), exported.eager, *stats)
        table[model, "torchscript"] = (
            TorchScriptPolicy(exported.bundle / TORCHSCRIPT_FILE),
            exported.eager,
            *stats,
        )
    return table


def _inputs(mean: np.ndarray, std: np.ndarray, b: int, k: int, noise_shape: tuple[int, ...], seed: int):
    rng = np.random.default_rng(seed)
    observation = (mean + std * rng.standard_normal((b, mean.shape[0]))).astype(np.float32)
    return observation, rng.standard_normal((b, k, *noise_shape)).astype(np.float32)


@pytest.mark.parametrize("runtime_name", ["onnxruntime", "torchscript"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("k", CANDIDATE_COUNTS)
@pytest.mark.parametrize("b", BATCH_SIZES)
def test_exported_graph_matches_eager_pytorch(runtimes, model, runtime_name, b, k):
    runtime, eager, mean, std = runtimes[model, runtime_name]
    observation, noise = _inputs(mean, std, b, k, eager.noise_shape, seed=1000 * b + k)
    with torch.inference_mode():
        expected = [v.numpy() for v in eager(torch.from_numpy(observation), torch.from_numpy(noise))]
    got = runtime(observation, noise)
    for name, reference in zip(OUTPUT_NAMES, expected, strict=True):
        assert got[name].shape == reference.shape, name
        assert got[name].dtype == np.float32, name
        np.testing.assert_allclose(got[name], reference, rtol=0, atol=ATOL, err_msg=name)


def test_candidates_differ_so_the_argmax_is_exercised(runtimes):
    runtime, eager, mean, std = runtimes["dit", "onnxruntime"]
    observation, noise = _inputs(mean, std, 64, 5, eager.noise_shape, seed=3)
    got = runtime(observation, noise)
    chosen = np.abs(got["candidates"] - got["action"][:, None, :]).max(-1).argmin(-1)
    assert np.ptp(got["candidates"], axis=1).max() > 0.1
    assert len(set(chosen.tolist())) > 1  # not always candidate 0


def test_one_candidate_returns_that_candidate_clipped_and_its_ensemble_q(runtimes):
    runtime, eager, mean, std = runtimes["dit", "onnxruntime"]
    observation, noise = _inputs(mean, std, 16, 1, eager.noise_shape, seed=4)
    got = runtime(observation, noise)
    np.testing.assert_array_equal(got["action"], got["candidates"][:, 0])
    assert np.abs(got["action"]).max() <= 1.0
    with torch.inference_mode():
        obs = eager.normalizer(torch.from_numpy(observation))
        q = eager.critic(obs, torch.from_numpy(got["action"])).mean(0).numpy()
    np.testing.assert_allclose(got["q_value"], q, rtol=0, atol=ATOL)


@pytest.mark.parametrize("model", ["chunked-mlp", "chunked-dit"])
def test_a_chunk_is_one_candidates_whole_chunk_scored_as_one_vector(runtimes, model):
    runtime, eager, mean, std = runtimes[model, "onnxruntime"]
    horizon, action_dim = eager.noise_shape
    observation, noise = _inputs(mean, std, 64, 8, eager.noise_shape, seed=5)
    got = runtime(observation, noise)
    assert got["action"].shape == (64, horizon, action_dim)
    assert got["candidates"].shape == (64, 8, horizon, action_dim)
    # every step of the answered chunk comes from the same candidate, and that candidate varies
    distance = np.abs(got["candidates"] - got["action"][:, None]).reshape(64, 8, -1).max(-1)
    assert (distance.min(-1) == 0).all() and len(set(distance.argmin(-1).tolist())) > 1
    assert np.ptp(got["candidates"], axis=2).max() > 0.1  # the steps of a chunk differ
    with torch.inference_mode():
        obs = eager.normalizer(torch.from_numpy(observation))
        chunk = torch.from_numpy(got["action"]).flatten(1)  # the critic scores (s, a_t..a_{t+H-1})
        q = eager.critic(obs, chunk).mean(0).numpy()
    np.testing.assert_allclose(got["q_value"], q, rtol=0, atol=ATOL)
