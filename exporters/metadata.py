"""`metadata.json` of a new bundle (docs/bundle-format.md), from the checkpoint and the written files.

Keys beyond the documented ones are additive (readers ignore unknown keys): `agent`,
`precision`, `graph` (node count, size, opset, exporter of policy.onnx), `selftest`,
`source_checkpoint`, `training_metrics`, `versions.onnxruntime`/`onnxslim`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import onnx
import onnxruntime
import onnxslim
import torch

from exporters.bundle import (
    FORMAT_VERSION,
    ONNX_FILE,
    SELFTEST_FILE,
    TORCHSCRIPT_FILE,
)
from exporters.onnx_export import GraphSummary
from exporters.parity import Tolerance
from training.checkpoint import PolicyCheckpoint
from training.config import config_to_dict
from training.inference import ServingPolicy
from training.networks import DiTPolicy


@dataclass(frozen=True)
class BundleContents:
    """What an export wrote, as metadata needs it."""

    name: str
    max_num_candidates: int
    precision: str  # "float32" or "float16"
    graph: GraphSummary
    torchscript_bytes: int | None  # None when no policy.ts was written
    tolerance: Tolerance


def policy_type(module: ServingPolicy) -> str:
    return "dit" if isinstance(module.policy, DiTPolicy) else "mlp"


def _mfql_version() -> str | None:
    try:
        return importlib.metadata.version("mfql")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree without install
        return None


def _portable_config(config) -> dict:
    """The training config with the run and dataset folders by name only: a bundle travels to
    other machines, and the absolute paths of the one that built it mean nothing there."""
    data = config_to_dict(config)
    data["dataset_dir"] = Path(config.dataset_dir).name
    data["out_dir"] = Path(config.out_dir).name
    source = config.data.source
    if source is not None and not source.startswith("minari:"):
        data["data"]["source"] = Path(source).name  # a LeRobot folder or a file: by name
    return data


def _dataset_name(env_name: str) -> str:
    """'cube-single-play-singletask-task2-v0' -> 'cube-single-play-v0' (the files it trained on)."""
    tokens = env_name.split("-")
    if "singletask" not in tokens:
        return env_name
    return "-".join(tokens[: tokens.index("singletask")] + tokens[-1:])


def _data_summary(checkpoint: PolicyCheckpoint) -> dict:
    """Where the training data came from (docs/bundle-format.md `data`); old runs: OGBench files."""
    provenance = dict(checkpoint.dataset)
    if not provenance:  # a run from before data sources were recorded: its OGBench files
        config = checkpoint.config
        provenance = {"format": "ogbench", "source": f"{_dataset_name(config.env_name)}.npz"}
    provenance.setdefault("reward", dataclasses.asdict(checkpoint.config.data.reward))
    return provenance


def _evaluation_summary(evaluation: dict | None) -> dict | None:
    if evaluation is None:
        return None
    keys = (
        "env",
        "episodes",
        "num_candidates",
        "success_rate",
        "success_rate_stderr",
        "mean_return",
        "mean_episode_length",
    )
    return {key: evaluation.get(key) for key in keys}


def _signature(obs_dim: int, chunk: tuple[int, ...]) -> dict[str, list[dict]]:
    """The graph's tensors; `chunk` is one action's shape, [d] or [H, d] (ServingPolicy.noise_shape)."""

    def tensor(name: str, shape: list) -> dict:
        return {"name": name, "dtype": "float32", "shape": shape}

    return {
        "inputs": [tensor("observation", ["B", obs_dim]), tensor("noise", ["B", "K", *chunk])],
        "outputs": [
            tensor("action", ["B", *chunk]),
            tensor("q_value", ["B"]),
            tensor("candidates", ["B", "K", *chunk]),
        ],
    }


@functools.cache
def env_control_period(env_name: str, observation_keys: tuple[str, ...] | None = None) -> float | None:
    """Seconds per step of `env_name`, read from the env itself; None where it cannot be built here.

    gymnasium's MuJoCo envs report `dt` (frame skip x physics timestep); OGBench's manipulation
    envs report `control_timestep()` and leave `dt` unset. Building one needs ogbench (the
    train extra): without it, or for a name it does not know, the period is unknown and
    `mfql-export --control-period-s` states it.
    """
    try:
        import gymnasium
        import ogbench  # noqa: F401 - make_task_env imports it; probed here to say "unknown", not fail
    except ImportError:
        return None
    from training.envs import make_eval_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a headless machine's GLFW notice, gymnasium's dtype notes
        try:
            env = make_eval_env(env_name, observation_keys)
        except (ValueError, KeyError, ImportError, gymnasium.error.Error):
            return None
    try:
        return _step_seconds(env.unwrapped)
    finally:
        env.close()


def _step_seconds(env) -> float | None:
    seconds = getattr(env, "dt", None)
    if seconds is None and callable(getattr(env, "control_timestep", None)):
        seconds = env.control_timestep()
    return None if seconds is None else float(seconds)


def build_metadata(
    checkpoint: PolicyCheckpoint,
    module: ServingPolicy,
    contents: BundleContents,
    evaluation: dict | None = None,
    control_period_s: float | None = None,
    default_num_candidates: int | None = None,
) -> dict:
    """`evaluation`: an `mfql-eval` report of this checkpoint; its success rate replaces the training one.

    `control_period_s`: seconds per control step (None: unknown); a chunk's actions are meant
    for consecutive steps of that period. `default_num_candidates`: the K a request gets when it
    names none (None: the K the run acts with).
    """
    config, d = checkpoint.config, checkpoint.action_dim
    files = {"onnx": ONNX_FILE}
    if contents.torchscript_bytes is not None:
        files["torchscript"] = TORCHSCRIPT_FILE
    return {
        "format_version": FORMAT_VERSION,
        "name": contents.name,
        "obs_dim": checkpoint.obs_dim,
        "action_dim": d,
        # The range the bundle's actions cover: [-1, 1], or the data's units for scaled actions.
        "action_low": [float(v) for v in module.action_low.tolist()],
        "action_high": [float(v) for v in module.action_high.tolist()],
        "default_num_candidates": default_num_candidates or config.acting_num_candidates,
        "max_num_candidates": contents.max_num_candidates,
        "action_horizon": module.action_horizon,
        # MeanFlow candidates re-noised to this time in the graph (two network evaluations each); null: one step
        "renoise_time": module.renoise_time,
        # how the graph ranks candidates: the critic ensemble's "mean" Q (the paper) or its "min"
        "critic_aggregate": module.critic_aggregate,
        # the factor the graph scales each candidate's noise by before the policy (1: unscaled)
        "noise_scale": module.noise_scale,
        "control_period_s": control_period_s,
        "policy_type": policy_type(module),
        "agent": config.agent,
        "env_name": config.env_name,
        "dataset": _dataset_name(config.env_name),
        "data": _data_summary(checkpoint),
        "observation_keys": checkpoint.dataset.get("observation_keys"),
        "action_names": checkpoint.dataset.get("action_names"),
        "training_seed": config.seed,
        "training_config": _portable_config(config),
        "training_step": checkpoint.step,
        "success_rate": (evaluation or checkpoint.metrics).get("success_rate"),
        "evaluation": _evaluation_summary(evaluation),
        "training_metrics": checkpoint.metrics,
        # run/checkpoints/step_<N>: where it came from, without this machine's folders
        "source_checkpoint": str(Path(*checkpoint.path.resolve().parts[-3:])),
        "source_checkpoint_sha256": checkpoint.sha256(),
        "exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {
            "mfql": _mfql_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnxslim": onnxslim.__version__,
            "opset": contents.graph.opset,
        },
        **_signature(checkpoint.obs_dim, module.noise_shape),
        "files": files,
        "precision": contents.precision,
        "graph": contents.graph.as_dict(),
        "torchscript_bytes": contents.torchscript_bytes,
        "selftest": {"file": SELFTEST_FILE, **contents.tolerance.as_dict()},
    }
