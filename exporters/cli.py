"""`mfql-export`: write a policy bundle from a checkpoint, or inspect one.

    mfql-export CHECKPOINT --out BUNDLE_DIR [--format onnx,torchscript] [--max-candidates 32] [--num-candidates K]
                [--opset 18] [--fp16] [--name NAME] [--triton-repo DIR] [--overwrite]
                [--evaluation EVAL_JSON] [--control-period-s SECONDS]
    mfql-export inspect BUNDLE_DIR

Errors are one line on stderr and exit code 2. `inspect` imports torch only to run a
bundle's TorchScript module, so it works where only the serving extra is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exporters.errors import BundleError, ExportError

PROG = "mfql-export"


def build_export_parser() -> argparse.ArgumentParser:
    from exporters.onnx_export import DEFAULT_OPSET  # imports torch: export only

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a training checkpoint as a policy bundle (docs/bundle-format.md). "
        f"Run '{PROG} inspect BUNDLE_DIR' to verify a bundle.",
    )
    parser.add_argument("checkpoint", type=Path, help="step directory, or run directory (newest step)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    parser.add_argument(
        "--format", default="onnx,torchscript", help="comma-separated: onnx (required), torchscript"
    )
    parser.add_argument("--max-candidates", type=int, default=32, help="largest K a server should accept")
    parser.add_argument(
        "--num-candidates",
        type=int,
        help="K a request gets when it names none (default: the K the run acts with); --evaluation "
        "must have acted with it",
    )
    parser.add_argument(
        "--renoise-time",
        type=float,
        help="MeanFlow policies: bake re-noised candidates into the graph (each one-step candidate "
        "re-noised to this time in (0, 1) and refined once more; 0: one step; default: the run's own, "
        "usually off)",
    )
    parser.add_argument(
        "--critic-aggregate",
        choices=["mean", "min"],
        help="bake the candidates' ranking into the graph: the critic ensemble's mean Q or its "
        "minimum (default: the run's own, usually mean)",
    )
    parser.add_argument(
        "--noise-scale",
        type=float,
        help="bake a sampling temperature into the graph: each candidate's noise scaled by this "
        "factor >= 0 before the policy (default: the run's own, usually 1)",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ai.onnx opset (default {DEFAULT_OPSET}; >= 17)"
    )
    parser.add_argument(
        "--fp16", action="store_true", help="float16 weights and activations; inputs/outputs stay float32"
    )
    parser.add_argument("--name", default=None, help="model name (default: <env_name>-<policy type>)")
    parser.add_argument(
        "--triton-repo", type=Path, default=None, help="also write DIR/<name>/ for Triton/KServe"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle / Triton model")
    parser.add_argument(
        "--evaluation",
        type=Path,
        default=None,
        help="mfql-eval JSON report of this checkpoint: its success rate goes into metadata.json",
    )
    parser.add_argument(
        "--control-period-s",
        type=float,
        default=None,
        help="seconds per control step, for metadata.json (default: read from the training env; "
        "null if it cannot be built here)",
    )
    for flag, text in (
        ("--action-low", "lower action bounds the server clamps to (1 or action_dim comma-separated values)"),
        (
            "--action-high",
            "upper action bounds the server clamps to (1 or action_dim comma-separated values)",
        ),
        (
            "--max-action-delta",
            "largest change of an action per control step the server allows (1 or action_dim values)",
        ),
    ):
        parser.add_argument(flag, type=_floats, default=None, help=text)
    return parser


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}") from None


def build_inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} inspect",
        description="Print a bundle's metadata, verify SHA256SUMS and run its parity self-test.",
    )
    parser.add_argument("bundle", type=Path, help="bundle directory")
    return parser


def _one_line(exc: Exception) -> str:
    # Some messages embed multi-line text from torch (load_state_dict lists every mismatch).
    return " ".join(str(exc).split())


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def run_export(args: argparse.Namespace) -> int:
    from exporters.export import ExportOptions, export_bundle
    from training.checkpoint import CheckpointError
    from training.config import ActingOverrides

    options = ExportOptions(
        out=args.out,
        formats=tuple(part.strip() for part in args.format.split(",") if part.strip()),
        max_candidates=args.max_candidates,
        opset=args.opset,
        fp16=args.fp16,
        name=args.name,
        triton_repo=args.triton_repo,
        overwrite=args.overwrite,
        evaluation=args.evaluation,
        control_period_s=args.control_period_s,
        action_low=args.action_low,
        action_high=args.action_high,
        max_action_delta=args.max_action_delta,
        acting=ActingOverrides(args.renoise_time, args.critic_aggregate, args.noise_scale),
        num_candidates=args.num_candidates,
    )
    try:
        result = export_bundle(args.checkpoint, options)
    except (ExportError, CheckpointError, BundleError, OSError) as exc:
        print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
        return 2
    metadata, graph = result.metadata, result.metadata["graph"]
    print(
        f"{PROG}: wrote {result.bundle_dir} ({metadata['name']}, {metadata['policy_type']}, {metadata['precision']})"
    )
    print(
        f"  policy.onnx  {graph['node_count']} nodes, {_megabytes(graph['file_bytes'])}, "
        f"opset {graph['opset']} ({graph['exporter']})"
    )
    period = metadata["control_period_s"]
    print(
        f"  actions      {' x '.join(str(n) for n in metadata['outputs'][0]['shape'][1:])} per observation "
        f"(action_horizon {metadata['action_horizon']}), control period "
        + (f"{period:g} s" if period is not None else "unknown")
    )
    if metadata["torchscript_bytes"] is not None:
        print(f"  policy.ts    {_megabytes(metadata['torchscript_bytes'])}")
    for runtime, report in result.parity.items():
        counts = ", ".join(str(k) for k in report.candidate_counts)
        print(
            f"  parity {runtime} vs eager PyTorch: max |diff| {report.max_abs_difference:.2g} (K = {counts})"
        )
    if result.triton_config is not None:
        print(f"  triton model: {result.triton_config}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from exporters.inspection import inspect_bundle

    try:
        report = inspect_bundle(args.bundle)
    except (BundleError, OSError) as exc:
        print(f"{PROG} inspect: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(report.metadata, indent=2))
    print(f"checksums: OK ({', '.join(report.verified_files)})")
    for line in report.checks:
        print(f"self-test: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["inspect"]:
        return run_inspect(build_inspect_parser().parse_args(argv[1:]))
    return run_export(build_export_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
