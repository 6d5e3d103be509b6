"""Reward conventions: a dataset-level transform applied to every split and to online steps.

`dataset` keeps the source's rewards; `sparse` is Q-chunking's convention (Li, Zhou and Levine
2025, arXiv 2507.07969, its puzzle and scene runs): -1 on every transition that does not reach
success and 0 on one that does. On OGBench singletask data, whose relabelled reward is
(#satisfied subtasks - #subtasks), that is exactly QC's `(rewards != 0) * -1`. Then
`scale * r + shift`, e.g. shift -1 for D4RL antmaze's r - 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from training.data.dataset import OfflineDataset, with_rewards

RewardKind = Literal["dataset", "sparse"]
REWARD_KINDS: tuple[str, ...] = get_args(RewardKind)


@dataclass(frozen=True)
class RewardConfig:
    """How rewards are read from the data; recorded in every checkpoint and bundle."""

    kind: RewardKind = "dataset"  # the source's rewards, or sparse: 0 at success, -1 elsewhere
    scale: float = 1.0  # r <- scale * r + shift, after `kind`
    shift: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise ValueError(f"reward kind must be one of {list(REWARD_KINDS)}; got {self.kind!r}")
        if not (np.isfinite(self.scale) and np.isfinite(self.shift)):
            raise ValueError(f"reward scale and shift must be finite; got {self.scale}, {self.shift}")

    @property
    def is_identity(self) -> bool:
        return self.kind == "dataset" and self.scale == 1.0 and self.shift == 0.0

    def transform(self, rewards: np.ndarray, success: np.ndarray) -> np.ndarray:
        """The rewards under this convention; `success` is 1 where a transition reaches success."""
        base = np.asarray(rewards, dtype=np.float32)
        if self.kind == "sparse":
            base = (np.asarray(success, dtype=np.float32) > 0).astype(np.float32) - 1.0
        return (self.scale * base + self.shift).astype(np.float32)

    def online_reward(self, reward: float, success: bool) -> float:
        """The same transform for one environment step."""
        return float(self.transform(np.asarray([reward]), np.asarray([float(success)]))[0])

    def apply(self, dataset: OfflineDataset) -> OfflineDataset:
        if self.is_identity:
            return dataset
        return with_rewards(dataset, self.transform(dataset.rewards, dataset.success_flags))
