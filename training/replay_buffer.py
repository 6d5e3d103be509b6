"""Transitions in memory as tensors: the offline dataset, plus what online interaction adds.

Observations are normalised once, when they enter the buffer, so sampling a batch is
indexing only. Sampling draws from its own seeded generator, saved with checkpoints, so a
resumed run sees the same batches as an uninterrupted one.

With an action horizon H > 1 a sample is a chunk of H consecutive transitions of one
episode (Q-chunking's sampling): a chunk never crosses an episode boundary of the dataset or
of online interaction, so only rows with H - 1 more rows of their episode after them start one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from training.agents.mfql import Batch
from training.networks import OBS_NORM_EPS

_FIELDS = ("observations", "actions", "rewards", "masks", "next_observations")


def chunk_backup(rewards: Tensor, masks: Tensor, discount: float) -> tuple[Tensor, Tensor]:
    """The H-step return and bootstrap mask of chunks: rewards, masks [B, H] -> ([B], [B]).

    return = sum_j gamma^j r_{t+j} over the steps up to and including the first whose mask is
    0 (the singletask relabelling ends the episode there: nothing after it counts), and the
    bootstrap mask is the product of all H masks, so the target is
    return + gamma^H * mask * Q'(s_{t+H}, a'). H = 1 gives (r_t, m_t).
    """
    horizon = rewards.shape[-1]
    alive = torch.cumprod(torch.cat([torch.ones_like(masks[:, :1]), masks[:, :-1]], dim=1), dim=1)
    powers = discount ** torch.arange(horizon, dtype=rewards.dtype)
    return (alive * powers * rewards).sum(dim=1), masks.prod(dim=1)


def chunk_starts(episode_ends: Tensor, horizon: int) -> Tensor:
    """Rows that start a chunk of `horizon` rows inside one episode.

    `episode_ends` [N] is 1 on the last row of each episode; the rows are contiguous episodes,
    the last one possibly unfinished (online). Row t starts a chunk when t + horizon - 1 < N
    and no row in t .. t + horizon - 2 ends an episode.
    """
    size = episode_ends.shape[0]
    if size < horizon:
        return torch.zeros(0, dtype=torch.long)
    ends = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(episode_ends.long(), 0)])
    starts = torch.arange(size - horizon + 1)
    crossing = ends[starts + horizon - 1] - ends[starts]  # episode ends in rows t .. t + H - 2
    return starts[crossing == 0]


class ReplayBuffer:
    def __init__(
        self,
        dataset,
        obs_mean: np.ndarray,
        obs_std: np.ndarray,
        capacity_extra: int,
        seed: int,
        action_horizon: int = 1,
        discount: float = 0.99,
    ) -> None:
        """`dataset`: an OfflineDataset; `capacity_extra`: room for online transitions.

        `action_horizon` H > 1 samples H-step chunks (`discount` then weighs their rewards).
        """
        self.horizon, self.discount = int(action_horizon), float(discount)
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
        # Episode ends of every row (offline: the dataset's terminals; online: terminated or
        # truncated), and the rows that may start a chunk (H > 1 only).
        self.episode_ends = torch.zeros(capacity, dtype=torch.bool)
        terminals = getattr(dataset, "terminals", None)
        if terminals is not None:
            self.episode_ends[: self.offline_size] = torch.as_tensor(np.asarray(terminals) > 0)
        elif self.horizon > 1:
            raise ValueError(
                "action chunks need the dataset's episode ends ('terminals'); this dataset has none"
            )
        self._refresh_chunk_starts()

    def _refresh_chunk_starts(self) -> None:
        if self.horizon > 1:
            starts = chunk_starts(self.episode_ends[: self.size], self.horizon)
            # preallocated for every row, so an online row adds its start without a copy
            self._starts = torch.zeros(self.storage["rewards"].shape[0], dtype=torch.long)
            self._starts[: len(starts)] = starts
            self._start_count = len(starts)
            if self._start_count == 0:
                raise ValueError(
                    f"no episode has {self.horizon} transitions: action chunks of {self.horizon} "
                    "steps need episodes at least that long"
                )

    def normalize(self, observations: Tensor) -> Tensor:
        return (observations - self.mean) / (self.std + OBS_NORM_EPS)

    def add(
        self, observation, action, reward: float, mask: float, next_observation, episode_end: bool = False
    ) -> None:
        """Append one online transition (raw observations); `episode_end`: the episode stops after it."""
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
        self.episode_ends[row] = bool(episode_end)
        self.size += 1
        if self.horizon > 1:
            self._add_chunk_start(self.size - self.horizon)

    def end_episode(self) -> None:
        """The newest online row ends its episode (interaction restarts without it, e.g. on a resume)."""
        if self.size > self.offline_size:
            self.episode_ends[self.size - 1] = True

    def _add_chunk_start(self, start: int) -> None:
        """The newest row may complete a chunk that starts `horizon - 1` rows earlier."""
        if start >= self.offline_size and not self.episode_ends[start : start + self.horizon - 1].any():
            self._starts[self._start_count] = start
            self._start_count += 1

    @property
    def chunk_start_rows(self) -> Tensor:
        """Rows that start a sampleable chunk (H > 1)."""
        return self._starts[: self._start_count]

    def sample(self, batch_size: int) -> Batch:
        if self.horizon > 1:
            return self.sample_chunks(batch_size)
        index = torch.randint(0, self.size, (batch_size,), generator=self.generator)
        return Batch(**{name: self.storage[name][index] for name in _FIELDS})

    def sample_chunks(self, batch_size: int) -> Batch:
        """H-step chunks inside one episode each, with their backed-up rewards and masks (`Batch`)."""
        pick = torch.randint(0, self._start_count, (batch_size,), generator=self.generator)
        first = self._starts[pick]
        rows = first.unsqueeze(1) + torch.arange(self.horizon)  # [B, H]
        rewards, masks = chunk_backup(
            self.storage["rewards"][rows], self.storage["masks"][rows], self.discount
        )
        return Batch(
            observations=self.storage["observations"][first],
            actions=self.storage["actions"][rows].flatten(1),
            rewards=rewards,
            masks=masks,
            next_observations=self.storage["next_observations"][rows[:, -1]],
        )

    def online_tensors(self) -> dict[str, Tensor]:
        """The online part (for checkpoints; the offline part is reloaded from the dataset)."""
        rows = slice(self.offline_size, self.size)
        tensors = {f"buffer.{name}": self.storage[name][rows].clone() for name in _FIELDS}
        tensors["buffer.episode_ends"] = self.episode_ends[rows].clone()
        return tensors

    def load_online_tensors(self, tensors: dict[str, Tensor]) -> None:
        count = tensors["buffer.rewards"].shape[0] if "buffer.rewards" in tensors else 0
        rows = slice(self.offline_size, self.offline_size + count)
        for name in _FIELDS:
            if count:
                self.storage[name][rows] = tensors[f"buffer.{name}"]
        # Checkpoints written before episode ends were stored: no online row ended an episode.
        self.episode_ends[self.offline_size :] = False
        if count and "buffer.episode_ends" in tensors:
            self.episode_ends[rows] = tensors["buffer.episode_ends"]
        self.size = self.offline_size + count
        self._refresh_chunk_starts()
