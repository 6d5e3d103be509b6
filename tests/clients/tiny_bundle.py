"""A tiny real policy bundle (docs/bundle-format.md) built with ``onnx.helper``: no torch needed.

The graph is a stand-in policy with the bundle's exact signature: candidates
``clip(tanh(obs @ W) + 0.1 noise, -1, 1)``, scored by ``q = -sum(candidate^2)``, best of K
by argmax (lowest index on ties). With ``action_horizon`` H > 1 it is a chunked policy:
``obs @ W`` is read as H actions, so noise and candidates are [B, K, H, d] and the action is
the chunk [B, H, d], scored as a whole.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def chunk_shape(action_dim: int, action_horizon: int = 1) -> list[int]:
    """One candidate's shape: [d], or [H, d] for a chunked policy (as the exporter writes it)."""
    return [action_dim] if action_horizon == 1 else [action_horizon, action_dim]


def policy_graph(obs_dim: int, action_dim: int, seed: int = 0, action_horizon: int = 1) -> onnx.ModelProto:
    chunk = chunk_shape(action_dim, action_horizon)
    rank = 2 + len(chunk)  # of noise and candidates: [B, K, *chunk]
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(obs_dim, action_dim * action_horizon)).astype(np.float32)
    constants = {
        "W": weights,
        "noise_scale": np.float32(0.1),
        "low": np.float32(-1.0),
        "high": np.float32(1.0),
        "axis1": np.array([1], np.int64),
        "chunk_axes": np.arange(2, rank, dtype=np.int64),
        "keep_all_but_k": np.array([1, 0] + [1] * len(chunk), np.int64),
        "one_candidate": np.array([0, 1] + [0] * len(chunk), np.int64),
        "batch_and_chunk": np.array([0, *chunk], np.int64),  # Reshape: 0 keeps B
    }
    nodes = [
        helper.make_node("MatMul", ["observation", "W"], ["projected"]),
        helper.make_node("Tanh", ["projected"], ["flat_base"]),
        helper.make_node("Reshape", ["flat_base", "batch_and_chunk"], ["base"]),
        helper.make_node("Unsqueeze", ["base", "axis1"], ["base_k"]),
        helper.make_node("Mul", ["noise", "noise_scale"], ["scaled_noise"]),
        helper.make_node("Add", ["base_k", "scaled_noise"], ["raw_candidates"]),
        helper.make_node("Clip", ["raw_candidates", "low", "high"], ["candidates"]),
        helper.make_node("Mul", ["candidates", "candidates"], ["squared"]),
        helper.make_node("ReduceSum", ["squared", "chunk_axes"], ["energy"], keepdims=0),
        helper.make_node("Neg", ["energy"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=1, select_last_index=0),
        helper.make_node("GatherElements", ["scores", "best"], ["best_score"], axis=1),
        helper.make_node("Squeeze", ["best_score", "axis1"], ["q_value"]),
        helper.make_node("Shape", ["candidates"], ["candidate_shape"]),
        helper.make_node("Mul", ["candidate_shape", "keep_all_but_k"], ["zeroed_k"]),
        helper.make_node("Add", ["zeroed_k", "one_candidate"], ["gather_shape"]),
        helper.make_node("Unsqueeze", ["best", "chunk_axes"], ["best_full_rank"]),
        helper.make_node("Expand", ["best_full_rank", "gather_shape"], ["best_index"]),
        helper.make_node("GatherElements", ["candidates", "best_index"], ["best_candidate"], axis=1),
        helper.make_node("Squeeze", ["best_candidate", "axis1"], ["action"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_policy",
        inputs=[
            helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["B", obs_dim]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", "K", *chunk]),
        ],
        outputs=[
            helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", *chunk]),
            helper.make_tensor_value_info("q_value", TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info("candidates", TensorProto.FLOAT, ["B", "K", *chunk]),
        ],
        initializer=[numpy_helper.from_array(np.asarray(v), name) for name, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def write_bundle(
    directory: Path,
    name: str,
    obs_dim: int,
    action_dim: int,
    env_name: str | None = None,
    action_horizon: int = 1,
    control_period_s: float | None = None,
) -> Path:
    """Write a complete bundle (policy.onnx, metadata.json, SHA256SUMS) into ``directory``.

    An H = 1 bundle is written as before action chunks existed (no ``action_horizon`` key).
    """
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(policy_graph(obs_dim, action_dim, action_horizon=action_horizon), directory / "policy.onnx")
    chunk = chunk_shape(action_dim, action_horizon)
    metadata = {
        "format_version": 1,
        "name": name,
        "obs_dim": obs_dim,
        "action_dim": action_dim,
        "action_low": [-1.0] * action_dim,
        "action_high": [1.0] * action_dim,
        "default_num_candidates": 1,
        "max_num_candidates": 8,
        "policy_type": "mlp",
        "env_name": env_name,
        "dataset": None,
        "training_step": None,
        "success_rate": None,
        "versions": {"mfql": "0.1.0", "onnx": onnx.__version__, "opset": OPSET},
        "inputs": [
            {"name": "observation", "dtype": "float32", "shape": ["B", obs_dim]},
            {"name": "noise", "dtype": "float32", "shape": ["B", "K", *chunk]},
        ],
        "outputs": [
            {"name": "action", "dtype": "float32", "shape": ["B", *chunk]},
            {"name": "q_value", "dtype": "float32", "shape": ["B"]},
            {"name": "candidates", "dtype": "float32", "shape": ["B", "K", *chunk]},
        ],
        "files": {"onnx": "policy.onnx"},
    }
    if action_horizon > 1:
        metadata.update(action_horizon=action_horizon, control_period_s=control_period_s)
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2))
    sums = [
        f"{hashlib.sha256((directory / f).read_bytes()).hexdigest()}  {f}"
        for f in ("policy.onnx", "metadata.json")
    ]
    (directory / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return directory
