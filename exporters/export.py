"""Checkpoint -> bundle: trace, check parity against eager PyTorch, describe, checksum, rename.

Everything is written into a sibling staging directory that becomes the bundle only when
complete (`bundle.staged_directory`), so a failure at any step leaves no half-written bundle
and an existing one untouched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exporters.bundle import (
    MODEL_NAME_PATTERN,
    ONNX_FILE,
    OUTPUT_NAMES,
    SELFTEST_FILE,
    TORCHSCRIPT_FILE,
    refuse_existing,
    staged_directory,
    write_checksums,
    write_metadata,
)
from exporters.errors import ExportError
from exporters.half_precision import Float16ServingPolicy
from exporters.metadata import BundleContents, build_metadata, env_control_period, policy_type
from exporters.onnx_export import DEFAULT_OPSET, check_opset, example_inputs, export_onnx
from exporters.parity import TOLERANCES, ParityCase, ParityReport, compare_runtime, save_parity_cases
from exporters.runtimes import OnnxRuntimePolicy, TorchScriptPolicy
from exporters.torchscript_export import export_torchscript
from exporters.triton import write_triton_model
from training.checkpoint import CheckpointError, PolicyCheckpoint, load_policy_checkpoint
from training.config import Acting, ActingOverrides
from training.inference import ServingPolicy, serving_policy_from_checkpoint

FORMATS = ("onnx", "torchscript")
SELFTEST_BATCH = 4  # rows per self-test case: enough to exercise batching, small enough to store


@dataclass(frozen=True)
class ExportOptions:
    out: Path  # the bundle directory to create
    formats: tuple[str, ...] = FORMATS  # which graphs to write; onnx is required by the format
    max_candidates: int = 32  # largest K a server should accept (metadata max_num_candidates)
    opset: int = DEFAULT_OPSET  # ai.onnx opset of policy.onnx
    fp16: bool = False  # float16 weights and activations behind float32 inputs/outputs
    name: str | None = None  # model name; default '<env_name>-<policy type>'
    triton_repo: Path | None = None  # also write a Triton / KServe model repository here
    overwrite: bool = False  # replace an existing bundle (and Triton model) instead of refusing
    evaluation: Path | None = None  # an `mfql-eval` JSON report of this checkpoint for metadata
    # seconds per control step, for metadata; None: read from the training env (null if it
    # cannot be built here, e.g. without ogbench)
    control_period_s: float | None = None
    # Action limits for the server (docs/control-loop.md): bounds narrower than the policy's range
    # (one value or action_dim values; None: the policy's own range) and the largest change per
    # control step (None: unlimited). Sessions may narrow them further, never widen them.
    action_low: tuple[float, ...] | None = None
    action_high: tuple[float, ...] | None = None
    max_action_delta: tuple[float, ...] | None = None
    # How the graph acts where not as the run does (each field None: the run's own): MeanFlow
    # candidates re-noised to a time and refined once more (0: one step), the critic ensemble's
    # "mean" or "min" ranking them, the factor on each candidate's noise.
    acting: ActingOverrides = ActingOverrides()
    # K a request gets when it names none (metadata default_num_candidates); None: the K the run
    # acts with (its --eval-num-candidates, else the agent's K)
    num_candidates: int | None = None


@dataclass(frozen=True)
class ExportResult:
    bundle_dir: Path
    metadata: dict
    parity: dict[str, ParityReport]  # runtime name -> its report against eager PyTorch
    triton_config: Path | None  # None unless --triton-repo was given


def check_options(options: ExportOptions) -> None:
    unknown = sorted(set(options.formats) - set(FORMATS))
    if unknown or "onnx" not in options.formats:
        raise ExportError(
            f"--format must be a comma-separated subset of {','.join(FORMATS)} including onnx "
            f"(docs/bundle-format.md requires policy.onnx); got {','.join(options.formats)}"
        )
    if options.name is not None and not MODEL_NAME_PATTERN.match(options.name):
        raise ExportError(f"--name must match {MODEL_NAME_PATTERN.pattern}; got {options.name!r}")
    if options.max_candidates < 1:
        raise ExportError(f"--max-candidates must be >= 1; got {options.max_candidates}")
    if options.num_candidates is not None and options.num_candidates < 1:
        raise ExportError(f"--num-candidates must be >= 1; got {options.num_candidates}")
    period = options.control_period_s
    if period is not None and not (period > 0 and math.isfinite(period)):
        raise ExportError(f"--control-period-s must be a positive number of seconds; got {period}")
    check_opset(options.opset)


def _per_dimension(values: tuple[float, ...] | None, name: str, dim: int) -> list[float] | None:
    if values is None:
        return None
    if len(values) not in (1, dim) or not all(math.isfinite(v) for v in values):
        raise ExportError(f"--{name} needs 1 or action_dim={dim} finite values; got {list(values)}")
    return [float(v) for v in (values * dim if len(values) == 1 else values)]


def action_limits(options: ExportOptions, low: list[float], high: list[float]) -> dict:
    """metadata's action_low / action_high / max_action_delta with the export's limits applied."""
    dim = len(low)
    new_low = _per_dimension(options.action_low, "action-low", dim) or low
    new_high = _per_dimension(options.action_high, "action-high", dim) or high
    delta = _per_dimension(options.max_action_delta, "max-action-delta", dim)
    for index in range(dim):
        if not low[index] <= new_low[index] <= new_high[index] <= high[index]:
            raise ExportError(
                f"action bounds at index {index}: [{new_low[index]}, {new_high[index]}] must lie within the "
                f"policy's range [{low[index]}, {high[index]}] with low <= high"
            )
    if delta is not None and min(delta) <= 0:
        raise ExportError(f"--max-action-delta values must be > 0; got {delta}")
    limits = {"action_low": new_low, "action_high": new_high}
    return {**limits, "max_action_delta": delta} if delta is not None else limits


def load_module(
    path: Path, overrides: ActingOverrides = ActingOverrides()
) -> tuple[ServingPolicy, PolicyCheckpoint]:
    checkpoint = load_policy_checkpoint(path)
    try:
        return serving_policy_from_checkpoint(checkpoint, overrides), checkpoint
    except ValueError as exc:  # e.g. a policy type this code does not know, or re-noising an FQL policy
        raise CheckpointError(f"{checkpoint.path}: {exc}") from exc


def default_name(checkpoint: PolicyCheckpoint, module: ServingPolicy) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{checkpoint.config.env_name}-{policy_type(module)}")
    return name.lstrip("_.-")[:128] or "policy"


def selftest_cases(
    module: ServingPolicy, checkpoint: PolicyCheckpoint, counts: list[int]
) -> list[ParityCase]:
    """Fixed inputs (observations at the dataset's scale) and the eager float32 outputs for them.

    The dataset's scale is the normaliser's statistics, or, for a run on raw observations
    (`--observation-normalization none`: mean 0, std 1), the data's own, which it records.
    """
    rng = np.random.default_rng(0)
    mean, std = checkpoint.obs_mean.numpy(), checkpoint.obs_std.numpy()
    scale = checkpoint.dataset.get("observation_scale")
    if scale is not None:
        mean, std = np.asarray(scale["mean"], np.float32), np.asarray(scale["std"], np.float32)
    cases = []
    for k in counts:
        scaled = mean + std * rng.standard_normal((SELFTEST_BATCH, checkpoint.obs_dim))
        observation = scaled.astype(np.float32)
        noise = rng.standard_normal((SELFTEST_BATCH, k, *module.noise_shape)).astype(np.float32)
        with torch.inference_mode():
            values = module(torch.from_numpy(observation), torch.from_numpy(noise))
        reference = {name: value.numpy() for name, value in zip(OUTPUT_NAMES, values, strict=True)}
        cases.append(ParityCase(observation, noise, reference))
    return cases


def _checked(runtime_name: str, report: ParityReport) -> ParityReport:
    if report.problems:
        raise ExportError(f"{runtime_name} differs from eager PyTorch: {'; '.join(report.problems)}")
    return report


def _write_bundle_files(
    staging: Path,
    module: ServingPolicy,
    checkpoint: PolicyCheckpoint,
    options: ExportOptions,
    name: str,
    default_k: int,
) -> tuple[BundleContents, dict[str, ParityReport]]:
    precision = "float16" if options.fp16 else "float32"
    exported = Float16ServingPolicy(module).eval() if options.fp16 else module
    example = example_inputs(checkpoint.obs_dim, module.action_dim, module.action_horizon)
    graph = export_onnx(exported, example, staging / ONNX_FILE, options.opset)
    torchscript_bytes = None
    if "torchscript" in options.formats:
        torchscript_bytes = export_torchscript(exported, example, staging / TORCHSCRIPT_FILE)
    tolerance = TOLERANCES[precision]
    cases = selftest_cases(module, checkpoint, sorted({1, default_k, options.max_candidates}))
    onnx_report = compare_runtime(OnnxRuntimePolicy(staging / ONNX_FILE), cases, tolerance)
    parity = {"onnxruntime": _checked("ONNX Runtime", onnx_report)}
    if torchscript_bytes is not None:
        torchscript_report = compare_runtime(TorchScriptPolicy(staging / TORCHSCRIPT_FILE), cases, tolerance)
        parity["torchscript"] = _checked("TorchScript", torchscript_report)
    save_parity_cases(staging / SELFTEST_FILE, cases)
    contents = BundleContents(name, options.max_candidates, precision, graph, torchscript_bytes, tolerance)
    return contents, parity


def read_evaluation(
    path: Path, checkpoint: PolicyCheckpoint, acting: Acting = Acting(), num_candidates: int | None = None
) -> dict:
    """An `mfql-eval` report, refused unless it evaluated this checkpoint's step and env, acting as
    the bundle does (`acting`: the graph's; `num_candidates`: its default K)."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"--evaluation {path}: not a readable mfql-eval JSON report ({exc})") from exc
    numeric = (int, float)
    if not isinstance(report, dict) or not (
        isinstance(report.get("success_rate"), numeric)
        or (report.get("success_rate") is None and isinstance(report.get("mean_return"), numeric))
    ):
        raise ExportError(
            f"--evaluation {path}: expected an mfql-eval report with a numeric 'success_rate' "
            "(or 'mean_return', for an env without success)"
        )
    trained_env = checkpoint.config.evaluation_env or checkpoint.config.env_name
    if report.get("step") != checkpoint.step or report.get("env") not in (
        trained_env,
        checkpoint.config.env_name,
    ):
        raise ExportError(
            f"--evaluation {path} evaluated step {report.get('step')} on {report.get('env')!r}; "
            f"the checkpoint is step {checkpoint.step} on {trained_env!r}"
        )
    if report.get("renoise_time") != acting.renoise_time:
        raise ExportError(
            f"--evaluation {path} acted with renoise_time {report.get('renoise_time')}; the bundle acts with "
            f"{acting.renoise_time} (evaluate with mfql-eval --renoise-time as exported)"
        )
    if report.get("critic_aggregate", "mean") != acting.critic_aggregate:
        raise ExportError(
            f"--evaluation {path} ranked candidates by the critic's {report.get('critic_aggregate', 'mean')} Q; "
            f"the bundle ranks by its {acting.critic_aggregate} (evaluate with mfql-eval --critic-aggregate as "
            "exported)"
        )
    if report.get("noise_scale", 1.0) != acting.noise_scale:
        raise ExportError(
            f"--evaluation {path} scaled the candidates' noise by {report.get('noise_scale', 1.0)}; the bundle "
            f"scales it by {acting.noise_scale} (evaluate with mfql-eval --noise-scale as exported)"
        )
    reported_k = report.get("num_candidates")
    if num_candidates is not None and reported_k is not None and reported_k != num_candidates:
        raise ExportError(
            f"--evaluation {path} acted with K = {reported_k} candidates; the bundle's default K is "
            f"{num_candidates} (evaluate with mfql-eval --num-candidates, or export with --num-candidates "
            f"{reported_k})"
        )
    return report


def export_bundle(checkpoint_path: Path, options: ExportOptions) -> ExportResult:
    """Write the bundle described by `options` from the checkpoint (step or run directory)."""
    check_options(options)
    refuse_existing(options.out, options.overwrite)
    module, checkpoint = load_module(checkpoint_path, options.acting)
    default_k = options.num_candidates or checkpoint.config.acting_num_candidates
    if options.max_candidates < default_k:
        what = (
            f"--num-candidates {default_k}"
            if options.num_candidates
            else f"the trained K = {default_k} of {checkpoint.path}"
        )
        raise ExportError(f"--max-candidates {options.max_candidates} is below {what}")
    evaluation = (
        read_evaluation(options.evaluation, checkpoint, module.acting, default_k)
        if options.evaluation
        else None
    )
    name = options.name or default_name(checkpoint, module)
    if options.triton_repo is not None:
        refuse_existing(options.triton_repo / name, options.overwrite)
    control_period_s = options.control_period_s
    if control_period_s is None:
        # The data's own period (LeRobot: 1 / fps), else the period of the env the run evaluated in.
        control_period_s = checkpoint.dataset.get("control_period_s")
    if control_period_s is None and checkpoint.config.evaluation_env is not None:
        control_period_s = env_control_period(
            checkpoint.config.evaluation_env, checkpoint.config.data.observation_keys
        )
    triton_config = None
    with staged_directory(options.out, options.overwrite) as staging:
        contents, parity = _write_bundle_files(staging, module, checkpoint, options, name, default_k)
        metadata = build_metadata(checkpoint, module, contents, evaluation, control_period_s, default_k)
        metadata.update(action_limits(options, metadata["action_low"], metadata["action_high"]))
        write_metadata(staging, metadata)
        write_checksums(staging)
        if options.triton_repo is not None:
            triton_config = write_triton_model(options.triton_repo, staging, metadata, options.overwrite)
    return ExportResult(options.out, metadata, parity, triton_config)
