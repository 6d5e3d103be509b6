"""Save and restore everything a run needs to continue exactly: agent, optimisers, RNGs, buffer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from training.agents import Agent
from training.agents.common import load_optimizer_state
from training.checkpoint import (
    CheckpointError,
    load_trainer_state,
    optimizer_state,
    save_checkpoint,
)
from training.config import TrainConfig
from training.replay_buffer import ReplayBuffer


def model_tensors(agent: Agent, obs_mean: np.ndarray, obs_std: np.ndarray) -> dict[str, Tensor]:
    """Every network weight under its module prefix, plus the observation statistics."""
    tensors = {
        f"{prefix}.{key}": value
        for prefix, module in agent.modules().items()
        for key, value in module.state_dict().items()
    }
    tensors["normalizer.mean"] = torch.as_tensor(obs_mean, dtype=torch.float32)
    tensors["normalizer.std"] = torch.as_tensor(obs_std, dtype=torch.float32)
    return tensors


def save_training_state(
    run_dir: Path,
    step: int,
    config: TrainConfig,
    agent: Agent,
    buffer: ReplayBuffer,
    metrics: dict,
    dataset: dict | None = None,
) -> Path:
    trainer_tensors = {
        "rng.agent": agent.generator.get_state(),
        "rng.buffer": buffer.generator.get_state(),
        **buffer.online_tensors(),
    }
    return save_checkpoint(
        run_dir,
        step,
        config,
        agent.obs_dim,
        agent.action_dim,
        model_tensors(agent, buffer.mean.numpy(), buffer.std.numpy()),
        agent.optimizers(),
        trainer_tensors,
        agent.extra_state(),
        metrics,
        keep=config.keep_checkpoints,
        dataset=dataset,
    )


def restore_training_state(
    step_dir: Path, agent: Agent, buffer: ReplayBuffer, model: dict[str, Tensor]
) -> None:
    """Load weights (from an already-read model file), optimisers, RNGs and online transitions."""
    tensors, state = load_trainer_state(step_dir)
    try:
        for prefix, module in agent.modules().items():
            start = prefix + "."
            module.load_state_dict({k[len(start) :]: v for k, v in model.items() if k.startswith(start)})
        for name, optimizer in agent.optimizers().items():
            load_optimizer_state(optimizer, optimizer_state(name, tensors, state))
        agent.load_extra_state(state)
        agent.generator.set_state(tensors["rng.agent"])
        buffer.generator.set_state(tensors["rng.buffer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{step_dir}: cannot restore training state ({exc})") from exc
    buffer.load_online_tensors(tensors)
