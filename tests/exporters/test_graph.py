"""policy.onnx is one checked, simplified graph with named dynamic B and K axes (and a static H when chunked)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from exporters.bundle import METADATA_FILE, ONNX_FILE, OUTPUT_NAMES, chunk_shape
from exporters.export import ExportOptions, export_bundle
from exporters.onnx_export import DEFAULT_OPSET
from exporters.runtimes import OnnxRuntimePolicy


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {initializer.name for initializer in graph.initializer}
    return names | {out for node in graph.node if node.op_type == "Constant" for out in node.output}


def unused_initializers(graph: onnx.GraphProto) -> list[str]:
    consumed = {name for node in graph.node for name in node.input}
    return [i.name for i in graph.initializer if i.name not in consumed]


def dead_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes no graph output depends on (nodes are in topological order)."""
    needed, live = {output.name for output in graph.output}, set()
    nodes = list(graph.node)
    for index in range(len(nodes) - 1, -1, -1):
        if any(name in needed for name in nodes[index].output):
            live.add(index)
            needed.update(nodes[index].input)
    return [f"{nodes[i].op_type} {nodes[i].name}" for i in range(len(nodes)) if i not in live]


def foldable_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes computing only from constants: constant folding should have removed them."""
    constants = _constant_names(graph)
    return [
        f"{node.op_type} {node.name}"
        for node in graph.node
        if node.op_type != "Constant" and all(name in constants or name == "" for name in node.input)
    ]


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def opset17_bundle(mlp_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("opset17") / "bundle"
    return export_bundle(mlp_checkpoint, ExportOptions(out=out, formats=("onnx",), opset=17)).bundle_dir


@pytest.fixture(scope="module")
def chunked_opset17_bundle(chunked_mlp_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("chunked_opset17") / "bundle"
    options = ExportOptions(out=out, formats=("onnx",), opset=17)
    return export_bundle(chunked_mlp_checkpoint, options).bundle_dir


@pytest.fixture(params=["mlp", "dit", "opset17", "chunked", "chunked-opset17"])
def bundle(request, mlp_export, dit_export, opset17_bundle, chunked_mlp_export, chunked_opset17_bundle):
    return {
        "mlp": mlp_export.bundle,
        "dit": dit_export.bundle,
        "opset17": opset17_bundle,
        "chunked": chunked_mlp_export.bundle,
        "chunked-opset17": chunked_opset17_bundle,
    }[request.param]


def test_graph_passes_the_full_onnx_checker(bundle):
    onnx.checker.check_model(str(bundle / ONNX_FILE), full_check=True)


def test_graph_is_simplified_no_dead_or_foldable_nodes_no_unused_initializers(bundle):
    graph = onnx.load(str(bundle / ONNX_FILE)).graph
    assert unused_initializers(graph) == []
    assert dead_nodes(graph) == []
    assert foldable_nodes(graph) == []


def test_graph_signature_has_named_dynamic_batch_and_candidate_axes(bundle):
    model = onnx.load(str(bundle / ONNX_FILE))
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    obs_dim, chunk = metadata["obs_dim"], list(chunk_shape(metadata))  # [d], or [H, d] when chunked
    assert chunk == ([metadata["action_dim"]] if metadata["action_horizon"] == 1 else [5, 4])
    inputs = {value.name: _dims(value) for value in model.graph.input}
    outputs = {value.name: _dims(value) for value in model.graph.output}
    assert inputs == {"observation": ["B", obs_dim], "noise": ["B", "K", *chunk]}
    assert outputs == {"action": ["B", *chunk], "q_value": ["B"], "candidates": ["B", "K", *chunk]}
    assert {entry["name"]: entry["shape"] for entry in metadata["inputs"]} == inputs
    assert {entry["name"]: entry["shape"] for entry in metadata["outputs"]} == outputs


def test_metadata_reports_the_graphs_node_count_size_and_opset(bundle):
    model = onnx.load(str(bundle / ONNX_FILE))
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    opset = next(entry.version for entry in model.opset_import if entry.domain == "")
    assert metadata["graph"]["node_count"] == len(model.graph.node)
    assert metadata["graph"]["file_bytes"] == (bundle / ONNX_FILE).stat().st_size
    assert metadata["graph"]["opset"] == metadata["versions"]["opset"] == opset


def test_default_opset_is_18_and_opset_17_is_written_as_asked(dit_export, opset17_bundle):
    def opset(bundle):
        model = onnx.load(str(bundle / ONNX_FILE))
        return next(entry.version for entry in model.opset_import if entry.domain == "")

    assert opset(dit_export.bundle) == DEFAULT_OPSET == 18
    assert opset(opset17_bundle) == 17


def test_opset_17_graph_matches_eager_for_any_batch_and_candidate_count(opset17_bundle, mlp_export):
    runtime = OnnxRuntimePolicy(opset17_bundle / ONNX_FILE)
    rng = np.random.default_rng(0)
    for b, k in [(1, 1), (7, 5), (256, 32)]:
        observation = rng.standard_normal((b, 17)).astype(np.float32)
        noise = rng.standard_normal((b, k, 6)).astype(np.float32)
        got = runtime(observation, noise)
        with torch.inference_mode():
            expected = mlp_export.eager(torch.from_numpy(observation), torch.from_numpy(noise))
        for name, reference in zip(OUTPUT_NAMES, expected, strict=True):
            np.testing.assert_allclose(got[name], reference.numpy(), rtol=0, atol=1e-5, err_msg=name)


def test_chunked_opset_17_graph_matches_eager_for_any_batch_and_candidate_count(
    chunked_opset17_bundle, chunked_mlp_export
):
    runtime = OnnxRuntimePolicy(chunked_opset17_bundle / ONNX_FILE)
    rng = np.random.default_rng(1)
    for b, k in [(1, 1), (7, 5), (64, 32)]:
        observation = rng.standard_normal((b, 17)).astype(np.float32)
        noise = rng.standard_normal((b, k, 5, 4)).astype(np.float32)
        got = runtime(observation, noise)
        with torch.inference_mode():
            expected = chunked_mlp_export.eager(torch.from_numpy(observation), torch.from_numpy(noise))
        for name, reference in zip(OUTPUT_NAMES, expected, strict=True):
            np.testing.assert_allclose(got[name], reference.numpy(), rtol=0, atol=1e-5, err_msg=name)
