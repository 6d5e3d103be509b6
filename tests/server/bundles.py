"""Tiny real bundles for the server tests, written the way `mfql-export` writes them.

The graph is tests/clients/tiny_bundle.py's torch-free stand-in policy. On top of it this
adds what a real export has: `selftest.npz` (written with the exporter's own
`save_parity_cases`, so the server is tested against the exporter's file layout) and the
`selftest` metadata entry, and it re-writes SHA256SUMS with the exporter's `write_checksums`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from exporters.bundle import write_checksums
from exporters.parity import ParityCase, save_parity_cases
from tests.clients.tiny_bundle import chunk_shape, policy_graph, write_bundle

OUTPUT_NAMES = ("action", "q_value", "candidates")


def reference_outputs(graph: Path, observation: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    values = session.run(list(OUTPUT_NAMES), {"observation": observation, "noise": noise})
    return dict(zip(OUTPUT_NAMES, values, strict=True))


def write_test_bundle(
    directory: Path,
    name: str = "cube",
    obs_dim: int = 28,
    action_dim: int = 5,
    *,
    weights_seed: int = 0,
    selftest: bool = True,
    metadata: dict | None = None,
    action_horizon: int = 1,
    control_period_s: float | None = None,
) -> Path:
    """A complete, valid bundle; `weights_seed` makes versions compute different actions.

    `action_horizon` H > 1: a chunked policy (noise [B, K, H, d], action [B, H, d]). An H = 1
    bundle has no `action_horizon` key, as every bundle written before chunks."""
    env_name = "cube-single-play-singletask-task2-v0"
    write_bundle(directory, name, obs_dim, action_dim, env_name, action_horizon, control_period_s)
    graph = policy_graph(obs_dim, action_dim, seed=weights_seed, action_horizon=action_horizon)
    onnx.save(graph, directory / "policy.onnx")
    meta = json.loads((directory / "metadata.json").read_text())
    meta.update(metadata or {})
    if selftest:
        rng = np.random.default_rng(0)
        cases = []
        for k in sorted({1, meta["default_num_candidates"], meta["max_num_candidates"]}):
            observation = rng.standard_normal((4, obs_dim)).astype(np.float32)
            noise = rng.standard_normal((4, k, *chunk_shape(action_dim, action_horizon))).astype(np.float32)
            reference = reference_outputs(directory / "policy.onnx", observation, noise)
            cases.append(ParityCase(observation, noise, reference))
        save_parity_cases(directory / "selftest.npz", cases)
        meta["selftest"] = {"file": "selftest.npz", "atol": 1e-5, "rtol": 1e-6}
    (directory / "metadata.json").write_text(json.dumps(meta, indent=2))
    write_checksums(directory)
    return directory


def rewrite_metadata(directory: Path, **changes) -> None:
    """Edit metadata.json and keep SHA256SUMS consistent, so only the metadata check can fail."""
    meta = json.loads((directory / "metadata.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (directory / "metadata.json").write_text(json.dumps(meta))
    write_checksums(directory)
