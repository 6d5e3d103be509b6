"""ServingPolicy -> `policy.ts`: a traced TorchScript module with the graph's inputs and outputs.

Tracing (not scripting) because best-of-K takes the policy and critic as arguments, which
`torch.jit.script` cannot compile; the serving code derives every size from tensor shapes,
so the trace records `aten::size` and stays valid for any B and K (tests check 1..256, 1..32).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


def export_torchscript(module: nn.Module, example: tuple[Tensor, Tensor], path: Path) -> int:
    """Trace `module` on `example`, save it to `path`; returns the file size in bytes."""
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.jit in favour of torch.export; the bundle format
        # still offers TorchScript for torch-based consumers.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example)
        traced.save(str(path))
    return path.stat().st_size
