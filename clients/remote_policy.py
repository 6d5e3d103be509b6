"""``RemotePolicy``: a served model as a plain ``policy(observation) -> action`` callable.

It reads the model's metadata once, refuses an observation of the wrong size before
anything is sent, and can guard a fixed control rate: with ``control_period`` set, a call
that gets no usable answer within the period returns the previous action (the hold
action at the start of an episode) and counts a miss, instead of stalling the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.errors import DeadlineExceeded, DimensionMismatch, Overloaded, RequestTimeout, ServerError
from clients.http_client import PolicyClient
from clients.protocol import Inference, ModelMetadata

# What a guarded call may swallow: the answer is late or was not computed in time. Anything
# else (bad key, bad input, server bug, server gone) is not a latency miss and is raised.
MISSED_ANSWERS = (RequestTimeout, Overloaded, DeadlineExceeded)


class RemotePolicy:
    """``policy = RemotePolicy(client)``; then ``action = policy(observation)`` in the control loop.

    ``client``: a :class:`~clients.PolicyClient` or :class:`~clients.WebSocketPolicyClient`.
    ``control_period``: seconds per control step; enables the action-rate guard.
    ``hold_action``: returned on a miss before any answer this episode (default: the middle
    of the action bounds).
    """

    def __init__(
        self,
        client: Any,
        *,
        num_candidates: int | None = None,
        control_period: float | None = None,
        hold_action: Any = None,
    ):
        self.client = client
        self.metadata: ModelMetadata = client.metadata()
        self.num_candidates = num_candidates
        self.control_period = control_period
        self.hold_action = self._initial_hold(hold_action)
        self.steps = 0
        self.misses = 0
        self.last_answer: Inference | None = None  # the server's full answer to the last answered call
        self._last_action = self.hold_action
        self._options: dict[str, Any] = {}
        if control_period is not None:
            if control_period <= 0:
                raise ValueError(f"control_period must be > 0 seconds, got {control_period}")
            self._options["timeout"] = control_period
            if isinstance(client, PolicyClient):  # the server drops work that would come too late
                self._options["deadline_ms"] = control_period * 1e3

    def __call__(self, observation: Any, seed: int | None = None) -> np.ndarray:
        observation = self.check_observation(observation)
        self.steps += 1
        try:
            answer = self.client.infer(observation, self.num_candidates, seed, **self._options)
        except MISSED_ANSWERS:
            if self.control_period is None:
                raise
            self.misses += 1
            return self._last_action
        action = answer.actions[0]
        if action.shape != (self.metadata.action_dim,):
            raise ServerError(
                f"model {self.metadata.name!r} answered an action of shape {action.shape}, "
                f"expected ({self.metadata.action_dim},)"
            )
        self.last_answer = answer
        self._last_action = action
        return action

    def check_observation(self, observation: Any) -> np.ndarray:
        """``observation`` as float32 [obs_dim]; raises :class:`DimensionMismatch` naming both sizes."""
        array = np.asarray(observation, dtype=np.float32)
        if array.shape != (self.metadata.obs_dim,):
            raise DimensionMismatch(
                f"observation has shape {array.shape} but model {self.metadata.name!r} expects "
                f"obs_dim={self.metadata.obs_dim} (shape ({self.metadata.obs_dim},)); nothing was sent"
            )
        return array

    def reset(self) -> None:
        """Start a new episode: a miss before the first answer returns the hold action again."""
        self._last_action = self.hold_action

    def _initial_hold(self, hold_action: Any) -> np.ndarray:
        action_dim = self.metadata.action_dim
        if hold_action is not None:
            hold = np.asarray(hold_action, dtype=np.float32)
        elif self.metadata.action_low is not None and self.metadata.action_high is not None:
            hold = (self.metadata.action_low + self.metadata.action_high) / 2
        else:
            hold = np.zeros(action_dim, dtype=np.float32)
        if hold.shape != (action_dim,):
            raise DimensionMismatch(
                f"hold_action has shape {hold.shape}, the model's action_dim is {action_dim}"
            )
        return hold
