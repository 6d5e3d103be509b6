"""Self-describing, pickle-free checkpoints.

A run directory holds `checkpoints/step_<N>/`, each written as `tmp_step_<N>/` and renamed
when complete, so a crash never leaves a half-written step and never touches older steps:

    model.safetensors    policy.*, critic.*, target_critic.*, normalizer.mean, normalizer.std
    trainer.safetensors  optimiser tensors, RNG states, online replay transitions
    trainer.json         optimiser hyperparameters, alpha-controller state, scalar RNG state
    config.json          format version, full TrainConfig, obs/action dims, step, metrics

`config.json` alone describes the model: loading needs nothing but the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from training.config import TrainConfig, config_from_dict, config_to_dict

FORMAT_VERSION = 1
STEP_PREFIX = "step_"
MODEL_FILE, TRAINER_TENSORS, TRAINER_JSON, CONFIG_FILE = (
    "model.safetensors",
    "trainer.safetensors",
    "trainer.json",
    "config.json",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or incompatible; the message names the file and the problem."""


@dataclass(frozen=True)
class PolicyCheckpoint:
    """What inference and export need: config, dims, weights and normalisation."""

    path: Path
    config: TrainConfig
    obs_dim: int
    action_dim: int
    step: int
    metrics: dict
    model: dict[str, Tensor]
    # Where the training data came from (training/data/sources.py `provenance`): format, source,
    # content hash, observation keys, action names, control period, reward. {} for older runs.
    dataset: dict = field(default_factory=dict)

    def module_state(self, prefix: str) -> dict[str, Tensor]:
        start = prefix + "."
        return {key[len(start) :]: value for key, value in self.model.items() if key.startswith(start)}

    @property
    def obs_mean(self) -> Tensor:
        return self.model["normalizer.mean"]

    @property
    def obs_std(self) -> Tensor:
        return self.model["normalizer.std"]

    def sha256(self) -> str:
        return file_sha256(self.path / MODEL_FILE)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:09d}"


def step_of(step_dir: Path) -> int:
    """The step a `step_<N>` directory holds."""
    return int(step_dir.name[len(STEP_PREFIX) :])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Completed step directories of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    steps = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
    return sorted(steps, key=step_of)


def describe_checkpoint(
    step: int, config: TrainConfig, obs_dim: int, action_dim: int, metrics: dict, dataset: dict | None
) -> dict:
    """The `config.json` description of a step directory (what `load_policy_checkpoint` reads)."""
    return {
        "format_version": FORMAT_VERSION,
        "step": step,
        "obs_dim": obs_dim,
        "action_dim": action_dim,
        "config": config_to_dict(config),
        "metrics": metrics,
        "dataset": dataset or {},
    }


def resolve_checkpoint(path: Path | str) -> Path:
    """A step directory as given, or the newest step directory of a run directory."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    steps = list_checkpoints(path)
    if steps:
        return steps[-1]
    if path.exists():
        raise CheckpointError(
            f"{path}: no checkpoint found (expected {CONFIG_FILE} or checkpoints/{STEP_PREFIX}*/)"
        )
    raise CheckpointError(f"{path}: no such checkpoint or run directory")


def _flatten_optimizer(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{name}.state.{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(name: str, tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    prefix = f"{name}.state."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[field] = value
    for key, value in meta["scalars"].items():
        index, field = key.split(".", 1)
        state.setdefault(int(index), {})[field] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    step: int,
    config: TrainConfig,
    obs_dim: int,
    action_dim: int,
    model: dict[str, Tensor],
    optimizers: dict[str, torch.optim.Optimizer],
    trainer_tensors: dict[str, Tensor],
    trainer_state: dict,
    metrics: dict,
    keep: int = 3,
    dataset: dict | None = None,
) -> Path:
    """Write step `step` atomically; keep the newest `keep` complete steps."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f"tmp_{step_dir_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = dict(trainer_tensors)
    optimizer_meta = {}
    for name, optimizer in optimizers.items():
        flat, meta = _flatten_optimizer(name, optimizer)
        tensors.update(flat)
        optimizer_meta[name] = meta
    # CPU copies: a run trained on a GPU resumes, evaluates and exports anywhere
    save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / MODEL_FILE))
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TRAINER_TENSORS))
    (tmp / TRAINER_JSON).write_text(json.dumps({"optimizers": optimizer_meta, **trainer_state}))
    description = describe_checkpoint(step, config, obs_dim, action_dim, metrics, dataset)
    (tmp / CONFIG_FILE).write_text(json.dumps(description, indent=2))
    if final.exists():  # a rerun of the same step replaces it only once the new one is complete
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing (incomplete or corrupt checkpoint)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt JSON ({exc})") from exc


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (incomplete or corrupt checkpoint)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from exc


def load_policy_checkpoint(path: Path | str) -> PolicyCheckpoint:
    """Read config and weights (no optimiser state) of a step or run directory."""
    step_dir = resolve_checkpoint(path)
    description = _read_json(step_dir / CONFIG_FILE)
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{step_dir / CONFIG_FILE}: format_version {version!r}, expected {FORMAT_VERSION}"
        )
    try:
        config = config_from_dict(description["config"])
        obs_dim, action_dim = int(description["obs_dim"]), int(description["action_dim"])
        step = int(description["step"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{step_dir / CONFIG_FILE}: incomplete description ({exc!r})") from exc
    model = _read_tensors(step_dir / MODEL_FILE)
    for key in ("normalizer.mean", "normalizer.std"):
        if key not in model:
            raise CheckpointError(f"{step_dir / MODEL_FILE}: missing tensor {key!r}")
    if model["normalizer.mean"].shape != (obs_dim,):
        raise CheckpointError(
            f"{step_dir / MODEL_FILE}: normalizer.mean has shape {tuple(model['normalizer.mean'].shape)}, "
            f"expected ({obs_dim},)"
        )
    return PolicyCheckpoint(
        step_dir,
        config,
        obs_dim,
        action_dim,
        step,
        description.get("metrics", {}),
        model,
        description.get("dataset") or {},
    )


def load_trainer_state(step_dir: Path) -> tuple[dict[str, Tensor], dict]:
    """Optimiser tensors, RNG tensors and the JSON trainer state of a step directory."""
    return _read_tensors(step_dir / TRAINER_TENSORS), _read_json(step_dir / TRAINER_JSON)


def optimizer_state(name: str, tensors: dict[str, Tensor], trainer_state: dict) -> dict:
    """The `optimizer.load_state_dict` input for optimiser `name` of a loaded trainer state."""
    return _unflatten_optimizer(name, tensors, trainer_state["optimizers"][name])
