"""Real checkpoints for exporter tests, written by training's own `save_checkpoint` (no dataset needed).

A fresh MFQL policy has zero-initialised output heads (and adaLN modulations), so every
candidate would be identical and best-of-K trivial. Those layers get random weights, and the
head is then scaled so that raw actions have the spread of a trained policy (std 0.5, a few
percent clipped): candidates differ, the argmax matters, and the outputs live where a real
policy's do rather than far outside [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.agents.common import one_step_actions
from training.agents.fql import FQLAgent
from training.agents.mfql import MFQLAgent
from training.checkpoint import save_checkpoint
from training.config import AgentConfig, NetworkConfig, TrainConfig
from training.training_state import model_tensors

REFERENCE_DIT = NetworkConfig(policy="dit")  # width 256, 3 blocks, critics 4 x 512
SMALL_MLP = NetworkConfig(policy="mlp", mlp_hidden=(64, 64), critic_hidden=(64, 64))
SMALL_DIT = NetworkConfig(
    policy="dit", dit_width=32, dit_depth=2, time_frequencies=16, critic_hidden=(32, 32)
)
ENV_NAME = "cube-single-play-singletask-task2-v0"


@dataclass(frozen=True)
class CheckpointSpec:
    network: NetworkConfig
    obs_dim: int
    action_dim: int
    metrics: dict
    seed: int = 0
    eval_num_candidates: int | None = None  # the K the run acts with, if not the agent's
    action_horizon: int = 1  # H > 1: a chunked policy, networks of width H * action_dim
    renoise_time: float | None = None  # MeanFlow candidates re-noised when acting (None: one step)
    critic_aggregate: str = "mean"  # how acting ranks candidates by the critic ensemble

    @property
    def chunk_dim(self) -> int:
        return self.action_horizon * self.action_dim


RAW_ACTION_STD = 0.5


def _perturb_zero_layers(policy: torch.nn.Module, spec: CheckpointSpec) -> None:
    generator = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        zero_weights = [p for p in policy.parameters() if p.dim() == 2 and not p.any()]
        for weight in zero_weights:
            weight.copy_(torch.randn(weight.shape, generator=generator) / weight.shape[1] ** 0.5)
        observations = torch.randn(256, spec.obs_dim, generator=generator)
        noise = torch.randn(256, spec.chunk_dim, generator=generator)
        raw = one_step_actions(policy, observations, noise)
        head = zero_weights[-1]  # the output layer: raw actions are linear in it (zero bias)
        head.mul_(RAW_ACTION_STD / raw.std())


def write_checkpoint(run_dir: Path, spec: CheckpointSpec) -> Path:
    """A run directory holding one checkpoint of an untrained agent with perturbed heads."""
    config = TrainConfig(
        env_name=ENV_NAME,
        network=spec.network,
        agent_config=AgentConfig(
            action_horizon=spec.action_horizon,
            renoise_time=spec.renoise_time,
            critic_aggregate=spec.critic_aggregate,
        ),
        offline_steps=10,
        out_dir=str(run_dir),
        eval_num_candidates=spec.eval_num_candidates,
    )
    agent = MFQLAgent(
        spec.obs_dim, spec.action_dim, config.agent_config, spec.network, offline_steps=10, seed=spec.seed
    )
    _perturb_zero_layers(agent.policy, spec)
    rng = np.random.default_rng(spec.seed)
    mean = rng.normal(size=spec.obs_dim) * 2
    std = rng.uniform(0.5, 3.0, size=spec.obs_dim)
    save_checkpoint(
        run_dir,
        10,
        config,
        spec.obs_dim,
        spec.action_dim,
        model_tensors(agent, mean, std),
        agent.optimizers(),
        {},
        {"alpha_controller": agent.alpha_controller.state_dict()},
        spec.metrics,
    )
    return run_dir


def write_fql_checkpoint(run_dir: Path, spec: CheckpointSpec) -> Path:
    """An FQL run: its one-step policy has an ordinary (non-zero) head, so nothing is perturbed."""
    agent_config = AgentConfig(num_candidates=1, action_horizon=spec.action_horizon)
    config = TrainConfig(env_name=ENV_NAME, agent="fql", network=spec.network, agent_config=agent_config)
    agent = FQLAgent(spec.obs_dim, spec.action_dim, config.agent_config, spec.network, offline_steps=10)
    rng = np.random.default_rng(spec.seed)
    tensors = model_tensors(agent, rng.normal(size=spec.obs_dim), rng.uniform(0.5, 2.0, size=spec.obs_dim))
    save_checkpoint(
        run_dir, 10, config, spec.obs_dim, spec.action_dim, tensors, agent.optimizers(), {}, {}, spec.metrics
    )
    return run_dir
