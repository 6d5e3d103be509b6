"""Transitions in memory as tensors: the offline dataset, plus what online interaction adds.

Observations are normalised once, when they enter the buffer, so sampling a batch is
indexing only. Sampling draws from its own seeded generator, saved with checkpoints, so a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from training.agents.mfql import Batch
from training.networks import OBS_NORM_EPS

_FIELDS = ("observations", "actions", "rewards", "masks", "next_observations")


class ReplayBuffer:
    def __init__(
        self, dataset, obs_mean: np.ndarray, obs_std: np.ndarray, capacity_extra: int, seed: int
    ) -> None:
        """`dataset`: an OfflineDataset; `capacity_extra`: room for online transitions."""
        self.mean = torch.as_tensor(obs_mean, dtype=torch.float32)
        self.std = torch.as_tensor(obs_std, dtype=torch.float32)
        self.offline_size = int(dataset.size)
        capacity = self.offline_size + capacity_extra
        self.size = self.offline_size
        self.storage: dict[str, Tensor] = {}
        for name in _FIELDS:
            array = torch.as_tensor(np.asarray(getattr(dataset, name), dtype=np.float32))
            if name in ("observations", "next_observations"):
                array = self.normalize(array)
            store = torch.zeros((capacity,) + tuple(array.shape[1:]), dtype=torch.float32)
            store[: self.offline_size] = array
            self.storage[name] = store
        self.generator = torch.Generator().manual_seed(seed + 2)

    def normalize(self, observations: Tensor) -> Tensor:
        return (observations - self.mean) / (self.std + OBS_NORM_EPS)

    def add(self, observation, action, reward: float, mask: float, next_observation) -> None:
        """Append one online transition (raw observations)."""
        if self.size >= self.storage["rewards"].shape[0]:
            raise RuntimeError(f"replay buffer full ({self.size} transitions)")
        row = self.size
        self.storage["observations"][row] = self.normalize(torch.as_tensor(observation, dtype=torch.float32))
        self.storage["actions"][row] = torch.as_tensor(action, dtype=torch.float32)
        self.storage["rewards"][row] = float(reward)
        self.storage["masks"][row] = float(mask)
        self.storage["next_observations"][row] = self.normalize(
            torch.as_tensor(next_observation, dtype=torch.float32)
        )
        self.size += 1

    def sample(self, batch_size: int) -> Batch:
        index = torch.randint(0, self.size, (batch_size,), generator=self.generator)
        return Batch(**{name: self.storage[name][index] for name in _FIELDS})

    def online_tensors(self) -> dict[str, Tensor]:
        """The online part (for checkpoints; the offline part is reloaded from the dataset)."""
        rows = slice(self.offline_size, self.size)
        return {f"buffer.{name}": self.storage[name][rows].clone() for name in _FIELDS}

    def load_online_tensors(self, tensors: dict[str, Tensor]) -> None:
        count = tensors["buffer.rewards"].shape[0] if "buffer.rewards" in tensors else 0
        for name in _FIELDS:
            if count:
                self.storage[name][self.offline_size : self.offline_size + count] = tensors[f"buffer.{name}"]
        self.size = self.offline_size + count
