"""Offline RL agents, one file per method; `build_agent` picks one by name."""

from __future__ import annotations

from training.agents.best_of_n import BestOfNAgent
from training.agents.distilled_best_of_n import DistilledBestOfNAgent
from training.agents.fql import FQLAgent
from training.agents.mfql import MFQLAgent
from training.config import AgentConfig, NetworkConfig
from training.precision import Precision

Agent = MFQLAgent | FQLAgent | BestOfNAgent | DistilledBestOfNAgent
AGENTS = {"mfql": MFQLAgent, "fql": FQLAgent, "bon": BestOfNAgent, "bon-distill": DistilledBestOfNAgent}


def build_agent(
    name: str,
    obs_dim: int,
    action_dim: int,
    config: AgentConfig,
    network: NetworkConfig,
    offline_steps: int,
    seed: int,
    precision: Precision = "fp32",
    compile: bool = False,
) -> Agent:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; expected one of {sorted(AGENTS)}")
    return AGENTS[name](obs_dim, action_dim, config, network, offline_steps, seed, precision, compile)
