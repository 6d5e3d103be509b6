"""Action limits: bounds and the largest change per control step, per model and per session.

A model's limits come from its bundle (`action_low`/`action_high` when narrower than the
graph's own [-1, 1] clip, and the optional `max_action_delta`, docs/bundle-format.md); a
session may narrow them further, never widen them (`ActionLimits.narrowed`). Each step of an
answer is first held within `max_delta` of the step before it (the previous chunk's last
executed action for the first step, when the session knows it), then clipped to the bounds:
the bounds win where the two disagree, since they stand for the robot's joint limits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.errors import InvalidInput

GRAPH_CLIP = 1.0  # best_of_k clamps every candidate to [-1, 1]: bounds that wide never bind


@dataclass(frozen=True)
class ActionLimits:
    low: np.ndarray | None = None  # [action_dim] float32
    high: np.ndarray | None = None
    max_delta: np.ndarray | None = None  # [action_dim], > 0: largest |a_t - a_{t-1}| per step

    @property
    def active(self) -> bool:
        return self.low is not None or self.high is not None or self.max_delta is not None

    def narrowed(self, other: ActionLimits | None) -> ActionLimits:
        """The tighter of both, element by element (a session never loosens its model's limits)."""
        if other is None or not other.active:
            return self
        return ActionLimits(
            _tighter(self.low, other.low, np.maximum),
            _tighter(self.high, other.high, np.minimum),
            _tighter(self.max_delta, other.max_delta, np.minimum),
        )

    def apply(self, chunk: np.ndarray, previous: np.ndarray | None) -> tuple[np.ndarray, dict[str, int]]:
        """`chunk` [H, d] within the limits, and how many steps each limit changed ("rate", "bound")."""
        limited = chunk.copy()
        counts = {"rate": 0, "bound": 0}
        for step in range(limited.shape[0]):
            action = limited[step]
            if self.max_delta is not None and previous is not None:
                held = np.clip(action, previous - self.max_delta, previous + self.max_delta)
                counts["rate"] += int(not np.array_equal(held, action))
                action = held
            if self.low is not None or self.high is not None:
                bounded = np.clip(action, self.low, self.high)
                counts["bound"] += int(not np.array_equal(bounded, action))
                action = bounded
            limited[step] = action
            previous = action
        return limited, counts


def _tighter(mine, theirs, pick):
    if theirs is None:
        return mine
    return theirs if mine is None else pick(mine, theirs)


def model_limits(
    action_low: list[float], action_high: list[float], max_delta: list[float] | None
) -> ActionLimits:
    """A bundle's limits: its bounds only where narrower than the graph's clip (else they never bind)."""
    low = np.asarray(action_low, np.float32)
    high = np.asarray(action_high, np.float32)
    return ActionLimits(
        low if (low > -GRAPH_CLIP).any() else None,
        high if (high < GRAPH_CLIP).any() else None,
        None if max_delta is None else np.asarray(max_delta, np.float32),
    )


def session_limits(
    action_dim: int, low: object = None, high: object = None, max_delta: object = None
) -> ActionLimits | None:
    """Limits sent by a client (one number for every dimension, or `action_dim` numbers); 422 when wrong."""
    values = {
        "action_low": _per_dimension(low, "action_low", action_dim),
        "action_high": _per_dimension(high, "action_high", action_dim),
        "max_action_delta": _per_dimension(max_delta, "max_action_delta", action_dim),
    }
    if all(v is None for v in values.values()):
        return None
    lo, hi, delta = values.values()
    if lo is not None and hi is not None and (lo > hi).any():
        raise InvalidInput(f"action_low exceeds action_high at index {int(np.argmax(lo > hi))}")
    if delta is not None and not (delta > 0).all():
        raise InvalidInput(f"max_action_delta: every value must be > 0, got {delta.tolist()}")
    return ActionLimits(lo, hi, delta)


def _per_dimension(value: object, name: str, action_dim: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name}: expected a number or {action_dim} numbers, got {value!r}") from exc
    if array.ndim == 0:
        array = np.full(action_dim, array, np.float32)
    if array.shape != (action_dim,) or not np.isfinite(array).all():
        raise InvalidInput(
            f"{name}: expected one finite number or {action_dim} (action_dim), got shape {list(array.shape)}"
        )
    return array
