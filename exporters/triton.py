"""`--triton-repo DIR`: the bundle's graph as a Triton / KServe model repository entry.

Layout `DIR/<name>/config.pbtxt` + `DIR/<name>/1/model.onnx`, served by Triton's ONNX Runtime
backend unchanged (deploy/kserve/inferenceservice.yaml points KServe at DIR). Built from the
bundle's metadata only, so it needs no torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from exporters.bundle import ONNX_FILE, staged_directory

TRITON_CONFIG_FILE = "config.pbtxt"
TRITON_MODEL_FILE = "model.onnx"  # the ONNX Runtime backend's default_model_filename
TRITON_VERSION = "1"
DEFAULT_MAX_BATCH_SIZE = 256
# Triton waits up to this long for more requests to merge into one batch.
MAX_QUEUE_DELAY_MICROSECONDS = 1000
_DTYPES = {"float32": "TYPE_FP32"}  # bundle inputs/outputs are float32, with --fp16 too


def _tensor_entry(tensor: dict) -> str:
    """One input/output declaration; the batch dimension is implicit (max_batch_size > 0).

    K becomes -1; a chunked bundle's static H stays: noise and candidates [-1, H, d], action [H, d].
    """
    per_item = tensor["shape"][1:]
    dims = [-1 if isinstance(size, str) else int(size) for size in per_item]
    lines = [f'    name: "{tensor["name"]}"', f"    data_type: {_DTYPES[tensor['dtype']]}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(str(size) for size in dims)} ]")
    else:
        # A [B] tensor has no per-item dims; Triton's documented form is dims [1] reshaped to [].
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(metadata: dict, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for a bundle's graph."""
    inputs = ",\n".join(_tensor_entry(tensor) for tensor in metadata["inputs"])
    outputs = ",\n".join(_tensor_entry(tensor) for tensor in metadata["outputs"])
    return (
        f'name: "{metadata["name"]}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_MICROSECONDS}\n"
        "}\n"
    )


def write_triton_model(
    repository: Path,
    bundle_dir: Path,
    metadata: dict,
    overwrite: bool,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> Path:
    """Write `repository/<name>/` atomically; returns its config.pbtxt path."""
    model_dir = repository / metadata["name"]
    with staged_directory(model_dir, overwrite) as staging:
        (staging / TRITON_CONFIG_FILE).write_text(triton_config(metadata, max_batch_size))
        (staging / TRITON_VERSION).mkdir()
        shutil.copyfile(bundle_dir / ONNX_FILE, staging / TRITON_VERSION / TRITON_MODEL_FILE)
    return model_dir / TRITON_CONFIG_FILE
