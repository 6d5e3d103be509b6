"""Mixed precision for training: which number format the matrix multiplies run in.

`--precision bf16` runs matrix multiplies in bfloat16 through `torch.autocast`; master
weights, optimiser state, the losses, the MFI target and the JVP's inputs and outputs stay
float32 (networks return float32, and their output layers run in float32: see
`training.networks.full_precision`). Inside the autocast region forward-mode AD carries each
tangent in the dtype of its primal, so the JVP's intermediate products are bfloat16 like the
forward's.

`auto` picks bf16 only where the hardware multiplies bfloat16 natively (CPU: AMX or
AVX512-BF16, as oneDNN uses them; CUDA: a GPU that reports bf16 support) and fp32 elsewhere,
where emulated bf16 would be slower than fp32. The run's config records the resolved choice.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
RequestedPrecision = Literal["fp32", "bf16", "auto"]

# /proc/cpuinfo flags of the x86 instructions that multiply bfloat16 natively.
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The native-bf16 instruction flags this CPU reports (empty where none, or not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [flag for flag in _BF16_CPU_FLAGS if flag in flags]
    return []


def device_has_native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags()) and torch.backends.mkldnn.is_available()
    return False


def resolve_precision(requested: str, device: torch.device | None = None) -> Precision:
    """'fp32' or 'bf16' for a requested 'fp32' | 'bf16' | 'auto' on `device` (default CPU)."""
    if requested not in ("fp32", "bf16", "auto"):
        raise ValueError(f"unknown precision {requested!r}; expected 'fp32', 'bf16' or 'auto'")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    return "bf16" if device_has_native_bf16(device or torch.device("cpu")) else "fp32"


DEVICES = ("cpu", "cuda", "auto")


def resolve_device(requested: str) -> str:
    """'cpu' or 'cuda' (or 'cuda:N') for a requested device; 'auto' is CUDA where torch sees a GPU.

    A device names where the networks and the update run: batches are sampled on the CPU and
    moved, the random draws come from the CPU generators (so a seed draws the same numbers on
    every device), and evaluation and checkpoints use CPU copies.
    """
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = requested.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}; expected one of {list(DEVICES)} (or cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {requested}: this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu, or install a CUDA build of torch on a GPU machine"
        )
    return requested


def matmul_autocast(precision: Precision, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """The context a training step's forward passes run in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"unresolved precision {precision!r}; call resolve_precision first")
