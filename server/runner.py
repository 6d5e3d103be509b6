"""Run a bundle's graph: an ONNX Runtime session (torch-free) or, when asked for, TorchScript.

Both take observation [B, obs_dim] and noise [B, K, action_dim] (float32; [B, K, H, action_dim]
for a chunked bundle) and return the outputs by name. Which runtime and execution provider served is recorded in `provider`,
logged at load and shown in the model metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from server.bundle_loader import INPUT_NAMES, OUTPUT_NAMES, Bundle, Outputs
from server.errors import BundleError
from server.settings import ServerSettings

logger = logging.getLogger("mfql.runner")

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class PolicyRuntime(Protocol):
    provider: str

    def __call__(self, observation: np.ndarray, noise: np.ndarray) -> Outputs: ...


def default_providers(available: list[str]) -> list[str]:
    """GPU providers when this onnxruntime build has them (TensorRT first, CUDA next), CPU last.

    A GPU build without a usable device falls back to CPU when the session is created; the
    provider the session really uses is read back from it, not assumed from this list.
    """
    chosen = [p for p in GPU_PROVIDERS if p in available and "CUDAExecutionProvider" in available]
    return [*chosen, "CPUExecutionProvider"]


def session_options(settings: ServerSettings):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    spinning = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    if settings.denormal_as_zero:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.log_severity_level = 3  # ORT's own warnings (e.g. unused initializers) are not ours to show
    return options


class OnnxRunner:
    """An ONNX Runtime session of the bundle's `policy.onnx`."""

    def __init__(
        self, path: Path, settings: ServerSettings, obs_dim: int, action_dim: int, action_horizon: int = 1
    ):
        import onnxruntime

        available = onnxruntime.get_available_providers()
        requested = settings.provider_list or default_providers(available)
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise BundleError(
                f"providers {unknown} are not in this onnxruntime build (available: {available})"
            )
        options = session_options(settings)
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=requested)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
            if requested == ["CPUExecutionProvider"] or settings.provider_list:
                raise BundleError(f"{path}: ONNX Runtime cannot load the graph: {exc}") from exc
            logger.warning(
                "gpu session failed, falling back to CPU", extra={"path": str(path), "error": str(exc)}
            )
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        self.provider = self.session.get_providers()[0]
        check_signature(path, self.session, obs_dim, action_dim, action_horizon)

    def __call__(self, observation: np.ndarray, noise: np.ndarray) -> Outputs:
        values = self.session.run(list(OUTPUT_NAMES), {"observation": observation, "noise": noise})
        return dict(zip(OUTPUT_NAMES, values, strict=True))


def check_signature(path: Path, session, obs_dim: int, action_dim: int, action_horizon: int = 1) -> None:
    """The graph's inputs and outputs are the format's, with the metadata's dims (and chunk)."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if sorted(inputs) != sorted(INPUT_NAMES) or set(OUTPUT_NAMES) - set(outputs):
        raise BundleError(
            f"{path}: graph inputs {sorted(inputs)} / outputs {outputs}, expected {list(INPUT_NAMES)} / "
            f"{list(OUTPUT_NAMES)}"
        )
    chunk = [action_dim] if action_horizon == 1 else [action_horizon, action_dim]
    declared = (inputs["observation"][-1], inputs["noise"][2:])
    if declared != (obs_dim, chunk):
        raise BundleError(
            f"{path}: the graph takes observation [..., {declared[0]}] and noise [B, K, "
            f"{', '.join(str(n) for n in declared[1])}], metadata says obs_dim={obs_dim}, "
            f"action_dim={action_dim}, action_horizon={action_horizon}"
        )


class TorchScriptRunner:
    """The bundle's `policy.ts`; torch is imported here, only when `--backend torchscript` is chosen."""

    def __init__(self, path: Path, settings: ServerSettings):
        try:
            import torch
        except ImportError as exc:
            raise BundleError("--backend torchscript needs torch, which is not installed") from exc
        if settings.intra_op_threads:
            torch.set_num_threads(settings.intra_op_threads)
        self.torch = torch
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.provider = "torchscript-cpu"

    def __call__(self, observation: np.ndarray, noise: np.ndarray) -> Outputs:
        with self.torch.inference_mode():
            values = self.module(self.torch.from_numpy(observation), self.torch.from_numpy(noise))
        return {name: value.numpy() for name, value in zip(OUTPUT_NAMES, values, strict=True)}


def load_runtime(bundle: Bundle, settings: ServerSettings) -> PolicyRuntime:
    if settings.backend == "torchscript":
        return TorchScriptRunner(bundle.file("torchscript"), settings)
    meta = bundle.metadata
    return OnnxRunner(bundle.file("onnx"), settings, meta.obs_dim, meta.action_dim, meta.action_horizon)
