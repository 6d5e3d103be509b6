"""Run a bundle's graph: ONNX Runtime (torch-free) or TorchScript (imports torch when used).

Both take numpy observation [B, obs_dim] and noise [B, K, action_dim] ([B, K, H, action_dim]
for a chunked policy) and return the outputs by name, so parity checks and benchmarks treat
every runtime alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.bundle import OUTPUT_NAMES
from exporters.parity import Outputs


class OnnxRuntimePolicy:
    """An ONNX Runtime CPU session of `policy.onnx`."""

    def __init__(self, path: Path, intra_op_threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, observation: np.ndarray, noise: np.ndarray) -> Outputs:
        values = self.session.run(list(OUTPUT_NAMES), {"observation": observation, "noise": noise})
        return dict(zip(OUTPUT_NAMES, values, strict=True))


class TorchScriptPolicy:
    """A loaded `policy.ts`; torch is imported here and only here."""

    def __init__(self, path: Path) -> None:
        import torch

        self.torch = torch
        self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, observation: np.ndarray, noise: np.ndarray) -> Outputs:
        with self.torch.inference_mode():
            values = self.module(self.torch.from_numpy(observation), self.torch.from_numpy(noise))
        return {name: value.numpy() for name, value in zip(OUTPUT_NAMES, values, strict=True)}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
