"""A tiny real policy bundle (docs/bundle-format.md) built with ``onnx.helper``: no torch needed.

The graph is a stand-in policy with the bundle's exact signature: candidates
``clip(tanh(obs @ W) + 0.1 noise, -1, 1)``, scored by ``q = -sum(candidate^2)``, best of K
by argmax (lowest index on ties).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def policy_graph(obs_dim: int, action_dim: int, seed: int = 0) -> onnx.ModelProto:
    weights = np.random.default_rng(seed).normal(size=(obs_dim, action_dim)).astype(np.float32)
    constants = {
        "W": weights,
        "noise_scale": np.float32(0.1),
        "low": np.float32(-1.0),
        "high": np.float32(1.0),
        "axis1": np.array([1], np.int64),
        "axis2": np.array([2], np.int64),
        "keep_b_and_a": np.array([1, 0, 1], np.int64),
        "one_candidate": np.array([0, 1, 0], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["observation", "W"], ["projected"]),
        helper.make_node("Tanh", ["projected"], ["base"]),
        helper.make_node("Unsqueeze", ["base", "axis1"], ["base_k"]),
        helper.make_node("Mul", ["noise", "noise_scale"], ["scaled_noise"]),
        helper.make_node("Add", ["base_k", "scaled_noise"], ["raw_candidates"]),
        helper.make_node("Clip", ["raw_candidates", "low", "high"], ["candidates"]),
        helper.make_node("Mul", ["candidates", "candidates"], ["squared"]),
        helper.make_node("ReduceSum", ["squared", "axis2"], ["energy"], keepdims=0),
        helper.make_node("Neg", ["energy"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=1, select_last_index=0),
        helper.make_node("GatherElements", ["scores", "best"], ["best_score"], axis=1),
        helper.make_node("Squeeze", ["best_score", "axis1"], ["q_value"]),
        helper.make_node("Shape", ["candidates"], ["candidate_shape"]),
        helper.make_node("Mul", ["candidate_shape", "keep_b_and_a"], ["zeroed_k"]),
        helper.make_node("Add", ["zeroed_k", "one_candidate"], ["gather_shape"]),
        helper.make_node("Unsqueeze", ["best", "axis2"], ["best_3d"]),
        helper.make_node("Expand", ["best_3d", "gather_shape"], ["best_index"]),
        helper.make_node("GatherElements", ["candidates", "best_index"], ["best_candidate"], axis=1),
        helper.make_node("Squeeze", ["best_candidate", "axis1"], ["action"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_policy",
        inputs=[
            helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["B", obs_dim]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", "K", action_dim]),
        ],
        outputs=[
            helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", action_dim]),
            helper.make_tensor_value_info("q_value", TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info("candidates", TensorProto.FLOAT, ["B", "K", action_dim]),
        ],
        initializer=[numpy_helper.from_array(np.asarray(v), name) for name, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def write_bundle(
    directory: Path, name: str, obs_dim: int, action_dim: int, env_name: str | None = None
) -> Path:
    """Write a complete bundle (policy.onnx, metadata.json, SHA256SUMS) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(policy_graph(obs_dim, action_dim), directory / "policy.onnx")
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
            {"name": "noise", "dtype": "float32", "shape": ["B", "K", action_dim]},
        ],
        "outputs": [
            {"name": "action", "dtype": "float32", "shape": ["B", action_dim]},
            {"name": "q_value", "dtype": "float32", "shape": ["B"]},
            {"name": "candidates", "dtype": "float32", "shape": ["B", "K", action_dim]},
        ],
        "files": {"onnx": "policy.onnx"},
    }
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2))
    sums = [
        f"{hashlib.sha256((directory / f).read_bytes()).hexdigest()}  {f}"
        for f in ("policy.onnx", "metadata.json")
    ]
    (directory / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return directory
