"""ServingPolicy -> `policy.onnx`: one simplified, checked graph with dynamic B and K.

A chunked policy (action horizon H > 1) has the same two axes: its noise and candidates carry
one more static axis (H) after K, its action one after B (docs/bundle-format.md).

Exporter choice (torch 2.13, whose `torch.onnx.export` defaults to `dynamo=True`):
- opset >= 18: the torch.export-based ("dynamo") exporter with `dynamic_shapes`. Its
  operator library is written for opset 18, so 18 needs no version conversion; it is our
  default and ONNX Runtime has run it since 1.14.
- opset 17: the dynamo exporter cannot go below 18 (its 18 -> 17 conversion of ReduceMean's
  axes input and Split fails and it silently keeps 18), so we use the TorchScript-based
  exporter, which emits opset 17 natively, with `dynamic_axes`.
Either graph then goes through onnxslim (constant folding, dead-node removal) and the full
`onnx.checker`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxslim
import torch
from torch import Tensor, nn

from exporters.bundle import INPUT_NAMES, OUTPUT_NAMES
from exporters.errors import ExportError

DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization, which the critic uses, is an opset-17 operator
DYNAMO_MIN_OPSET = 18
DYNAMIC_AXES = {
    "observation": {0: "B"},
    "noise": {0: "B", 1: "K"},
    "action": {0: "B"},
    "q_value": {0: "B"},
    "candidates": {0: "B", 1: "K"},
}


@dataclass(frozen=True)
class GraphSummary:
    node_count: int
    file_bytes: int
    opset: int
    exporter: str

    def as_dict(self) -> dict:
        return {
            "node_count": self.node_count,
            "file_bytes": self.file_bytes,
            "opset": self.opset,
            "exporter": self.exporter,
        }


def example_inputs(obs_dim: int, action_dim: int, action_horizon: int = 1) -> tuple[Tensor, Tensor]:
    """Observation [2, obs_dim] and noise [2, 3, action_dim] ([2, 3, H, action_dim] when chunked)."""
    # B = 2 and K = 3: sizes of 0 or 1 would be specialised by torch.export, and distinct
    # sizes keep B and K from being unified into one symbol.
    generator = torch.Generator().manual_seed(0)
    chunk = (action_dim,) if action_horizon == 1 else (action_horizon, action_dim)
    return torch.randn(2, obs_dim, generator=generator), torch.randn(2, 3, *chunk, generator=generator)


def check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"--opset must be between {MIN_OPSET} and {newest} (onnx {onnx.__version__}); got {opset}"
        )


def _dynamo_export(module: nn.Module, example: tuple[Tensor, Tensor], opset: int) -> onnx.ModelProto:
    batch, candidates = torch.export.Dim("B", min=1), torch.export.Dim("K", min=1)
    program = torch.onnx.export(
        module,
        example,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: batch}, {0: batch, 1: candidates}),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    return program.model_proto


def _torchscript_based_export(
    module: nn.Module, example: tuple[Tensor, Tensor], opset: int, scratch: Path
) -> onnx.ModelProto:
    torch.onnx.export(
        module,
        example,
        str(scratch),
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_axes=DYNAMIC_AXES,
        opset_version=opset,
        dynamo=False,
    )
    model = onnx.load(str(scratch))
    scratch.unlink()
    _declare_static_output_dims(model, module, example)
    return model


def _declare_static_output_dims(
    model: onnx.ModelProto, module: nn.Module, example: tuple[Tensor, Tensor]
) -> None:
    """Write the fixed sizes of the outputs' non-dynamic axes into the graph's signature.

    The TorchScript-based exporter names the axes a Reshape computes (a chunk's H and d, from
    `unflatten`) 'Reshapeaction_dim_1' and so on, as if they were dynamic; the sizes are those
    of the traced call, so the graph declares them, as the dynamo exporter does.
    """
    with torch.inference_mode():
        shapes = {name: value.shape for name, value in zip(OUTPUT_NAMES, module(*example), strict=True)}
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if axis not in DYNAMIC_AXES[output.name]:
                dim.Clear()
                dim.dim_value = int(shapes[output.name][axis])


@contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Silence notices that say nothing about this model: torch.onnx's optional-dependency
    warnings (torchvision ops), onnxscript's "skipping constant folding" (onnxslim folds
    afterwards) and internal deprecations. Real failures still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            warnings.filterwarnings("ignore", message=".*The axis name: .* will not be used")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(module: nn.Module, example: tuple[Tensor, Tensor], path: Path, opset: int) -> GraphSummary:
    """Write the simplified, checked graph of `module` to `path`."""
    check_opset(opset)
    with _quiet_exporter_logs():
        if opset >= DYNAMO_MIN_OPSET:
            exported = _dynamo_export(module, example, opset)
        else:
            exported = _torchscript_based_export(
                module, example, opset, path.with_suffix(".unsimplified.onnx")
            )
    written_opset = next(entry.version for entry in exported.opset_import if entry.domain in ("", "ai.onnx"))
    if written_opset != opset:
        raise ExportError(f"torch {torch.__version__} wrote opset {written_opset} when asked for {opset}")
    model = onnxslim.slim(exported)
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ExportError(f"the opset-{opset} graph fails onnx.checker: {first_line}") from exc
    exporter = "torch.onnx dynamo" if opset >= DYNAMO_MIN_OPSET else "torch.onnx torchscript"
    return GraphSummary(len(model.graph.node), path.stat().st_size, opset, exporter)
