"""`--fp16`: float16 inside, float32 at the boundary, within the documented FLOAT16_TOLERANCE.

FLOAT16_TOLERANCE (exporters/parity.py): |got - eager float32| <= 1e-2 + 1e-2 |eager| for
q_value and candidates; the action must equal the eager action within that tolerance, or,
on a near tie (its Q within tolerance of the best Q), be another eager candidate.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from exporters.bundle import ONNX_FILE, OUTPUT_NAMES, TORCHSCRIPT_FILE
from exporters.cli import main
from exporters.parity import FLOAT16_TOLERANCE, output_mismatches
from exporters.runtimes import OnnxRuntimePolicy, TorchScriptPolicy


@pytest.fixture(scope="module")
def fp16_bundle(dit_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "bundle"
    assert main([str(dit_checkpoint), "--out", str(out), "--fp16"]) == 0
    return out


ALL_SHAPES = [(1, 1), (7, 5), (256, 32), (256, 5), (7, 1), (1, 32)]
# torch's float16 CPU kernels are slow (B = 256, K = 32 takes ~20 s); TorchScript float16 is
# for GPUs, so its CPU check uses smaller batches that still cover every K.
SMALL_SHAPES = [(1, 1), (7, 5), (16, 32)]


@pytest.mark.parametrize(
    "runtime_class, file, shapes",
    [(OnnxRuntimePolicy, ONNX_FILE, ALL_SHAPES), (TorchScriptPolicy, TORCHSCRIPT_FILE, SMALL_SHAPES)],
)
def test_fp16_graph_stays_within_its_tolerance_of_eager_float32(
    fp16_bundle, dit_export, runtime_class, file, shapes
):
    runtime = runtime_class(fp16_bundle / file)
    normalizer = dit_export.eager.normalizer
    rng = np.random.default_rng(16)
    for b, k in shapes:
        observation = (
            normalizer.mean.numpy() + normalizer.std.numpy() * rng.standard_normal((b, 28))
        ).astype(np.float32)
        noise = rng.standard_normal((b, k, 5)).astype(np.float32)
        with torch.inference_mode():
            values = dit_export.eager(torch.from_numpy(observation), torch.from_numpy(noise))
        reference = {name: value.numpy() for name, value in zip(OUTPUT_NAMES, values, strict=True)}
        got = runtime(observation, noise)
        assert all(value.dtype == np.float32 for value in got.values())
        assert output_mismatches(reference, got, FLOAT16_TOLERANCE) == [], (b, k)


def test_fp16_graph_has_float16_weights_float32_io_and_is_about_half_the_size(fp16_bundle, dit_export):
    model = onnx.load(str(fp16_bundle / ONNX_FILE))
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    weights = [i for i in model.graph.initializer if i.data_type in float_types and len(i.dims) >= 2]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    io = [*model.graph.input, *model.graph.output]
    assert {value.type.tensor_type.elem_type for value in io} == {onnx.TensorProto.FLOAT}
    fp32_size = (dit_export.bundle / ONNX_FILE).stat().st_size
    assert (fp16_bundle / ONNX_FILE).stat().st_size < 0.6 * fp32_size


def test_fp16_bundle_records_its_precision_and_passes_inspect(fp16_bundle, capsys):
    assert main(["inspect", str(fp16_bundle)]) == 0
    out = capsys.readouterr().out
    assert '"precision": "float16"' in out
    assert "atol 0.01 rtol 0.01" in out


def test_fp16_chunked_graph_keeps_the_chunk_shapes_within_its_tolerance(chunked_mlp_export, tmp_path):
    out = tmp_path / "bundle"
    assert main([str(chunked_mlp_export.checkpoint), "--out", str(out), "--fp16", "--format", "onnx"]) == 0
    runtime, eager = OnnxRuntimePolicy(out / ONNX_FILE), chunked_mlp_export.eager
    rng = np.random.default_rng(17)
    for b, k in [(1, 1), (7, 5), (64, 32)]:
        observation = (eager.normalizer.mean.numpy() + rng.standard_normal((b, 17))).astype(np.float32)
        noise = rng.standard_normal((b, k, 5, 4)).astype(np.float32)
        with torch.inference_mode():
            values = eager(torch.from_numpy(observation), torch.from_numpy(noise))
        reference = {name: value.numpy() for name, value in zip(OUTPUT_NAMES, values, strict=True)}
        got = runtime(observation, noise)
        assert got["action"].shape == (b, 5, 4) and got["candidates"].shape == (b, k, 5, 4)
        assert output_mismatches(reference, got, FLOAT16_TOLERANCE) == [], (b, k)
