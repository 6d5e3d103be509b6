"""``RemotePolicy``: a served model as a plain ``policy(observation) -> action`` callable.

It reads the model's metadata once, refuses an observation of the wrong size before
anything is sent, and can guard a fixed control rate: with ``control_period`` set, a call
that gets no usable answer within the period returns the previous action (the hold
action at the start of an episode) and counts a miss, instead of stalling the loop.

A chunked model (action horizon H > 1) answers H actions per request. The policy then
executes them open-loop, one per call, as openpi-client's ``ActionChunkBroker`` does: it
asks for a new chunk after ``replan_every`` steps (default H, the whole chunk, as
Q-chunking executes it), and ``reset()`` drops what is left of the chunk. A request that
misses its control period falls back on the chunk's next planned action while one is left.
"""

from __future__ import annotations

import uuid
from collections import deque
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
    ``replan_every``: for a chunked model, actions executed from each chunk before the next
    request, 1..H (default H, read from the model's metadata).
    ``session``: run as one server session (REST ``session_id``, v2 ``sequence_id``; a WebSocket
    connection is one anyway); ``reset()`` starts its next episode.
    ``handover_weight``, ``handover_scale``, ``delay_steps``, ``pin_delay``: the server's smooth
    hand-over (docs/control-loop.md); each request then carries the chunk's unexecuted rest.
    ``simulate_delay``: with ``delay_steps`` d, play the inference delay out in a synchronous
    loop (a simulator, a replay): the d actions after a request still come from the previous
    chunk's rest, as they would on a robot while the server computes, and the new chunk takes
    over at its step d (its steps before d were planned for time that has passed).
    ``boundary_changes`` / ``mean_boundary_change``: the mean absolute action change where a new
    chunk takes over; ``step_changes`` / ``mean_step_change`` at every step;
    ``within_chunk_changes`` / ``mean_within_chunk_change`` at every step that is not a hand-over.
    ``handover_q_spreads`` / ``mean_handover_q_spread``: the max - min of the candidates' Q the
    server reported at each hand-over (the scale of Q that a ``handover_weight`` in units of Q
    trades against the distance).
    """

    def __init__(
        self,
        client: Any,
        *,
        num_candidates: int | None = None,
        control_period: float | None = None,
        hold_action: Any = None,
        replan_every: int | None = None,
        session: bool = True,
        handover_weight: float | None = None,
        handover_scale: str | None = None,
        delay_steps: int | None = None,
        pin_delay: bool = False,
        simulate_delay: bool = False,
    ):
        self.client = client
        self.metadata: ModelMetadata = client.metadata()
        self.num_candidates = num_candidates
        self.control_period = control_period
        self.hold_action = self._initial_hold(hold_action)
        self.action_horizon = self.metadata.action_horizon
        self.replan_every = self._check_replan_every(replan_every)
        self.steps = 0  # calls
        self.requests = 0  # calls that asked the server (answered or missed)
        self.misses = 0
        self.last_answer: Inference | None = None  # the server's full answer to the last answered request
        self._last_action = self.hold_action
        self._plan: deque[np.ndarray] = deque()  # the current chunk's actions not yet executed
        self._executed = 0  # actions executed from the current chunk
        self._options: dict[str, Any] = {}
        self._session = _session_keys(client) if session else {}
        self._in_session = session
        self._new_episode = session  # the next request starts the session's episode
        self._handover = {
            "handover_weight": handover_weight,
            "handover_scale": handover_scale,
            "delay_steps": delay_steps,
            "pin_delay": pin_delay or None,
        }
        if simulate_delay and not delay_steps:
            raise ValueError("simulate_delay needs delay_steps >= 1 (the steps the answer takes)")
        self._simulated_delay = int(delay_steps or 0) if simulate_delay else 0
        self._takeover = 0  # actions of the current plan that come from the previous chunk
        self.boundary_changes: list[float] = []  # mean |a_t - a_(t-1)| where a new chunk takes over
        self.step_changes: list[float] = []  # the same at every step
        self.within_chunk_changes: list[float] = []  # the same at the steps that are not hand-overs
        self.handover_q_spreads: list[float] = []  # the answers' handover.q_spread
        self._episode_steps = 0
        if control_period is not None:
            if control_period <= 0:
                raise ValueError(f"control_period must be > 0 seconds, got {control_period}")
            self._options["timeout"] = control_period
            if isinstance(client, PolicyClient):  # the server drops work that would come too late
                self._options["deadline_ms"] = control_period * 1e3

    @property
    def needs_request(self) -> bool:
        """True when the next call asks the server (its ``seed`` is used); False when it is served
        from the buffered chunk."""
        return not self._plan or self._executed >= self.replan_every

    @property
    def steps_from_chunk(self) -> int:
        """Calls answered from the buffered chunk, without a request."""
        return self.steps - self.requests

    def __call__(self, observation: Any, seed: int | None = None) -> np.ndarray:
        """The action for this control step. ``seed`` seeds the request this call makes, if it
        makes one (see :attr:`needs_request`); a step served from the chunk ignores it."""
        observation = self.check_observation(observation)
        self.steps += 1
        if self.needs_request:
            self.requests += 1
            try:
                answer = self.client.infer(
                    observation, self.num_candidates, seed, **self._options, **self._control_option()
                )
            except MISSED_ANSWERS:
                if self.control_period is None:
                    raise
                self.misses += 1
                if self._plan:  # the old chunk still plans this step: better than repeating one
                    self._last_action = self._plan.popleft()
                return self._last_action
            self._new_episode = False
            self._plan = self._next_plan(self._chunk_of(answer))
            self._executed = 0
            self.last_answer = answer
            if "q_spread" in answer.control.get("handover", {}):
                self.handover_q_spreads.append(float(answer.control["handover"]["q_spread"]))
        previous = self._last_action if self._episode_steps else None
        self._episode_steps += 1
        self._executed += 1
        self._last_action = self._plan.popleft()
        if previous is not None:
            change = float(np.abs(self._last_action - previous).mean())
            self.step_changes.append(change)
            if self._executed == self._takeover + 1:  # the new chunk's first executed action
                self.boundary_changes.append(change)
            else:
                self.within_chunk_changes.append(change)
        return self._last_action

    def _next_plan(self, chunk: list[np.ndarray]) -> deque:
        """The actions to execute next: the new chunk, or with a simulated delay d the old rest's
        first d actions (held at its last action if shorter) and then the new chunk from step d."""
        delay = min(self._simulated_delay, len(chunk) - 1)
        if delay == 0 or not self._episode_steps:  # an episode's first chunk has nothing before it
            self._takeover = 0
            return deque(chunk)
        rest = list(self._plan)[:delay]
        rest += [rest[-1] if rest else self._last_action] * (delay - len(rest))
        self._takeover = delay
        return deque([*rest, *chunk[delay:]])

    @property
    def simulated_delay_steps(self) -> int:
        """d played out by ``simulate_delay`` (0: the new chunk runs from its first step)."""
        return self._simulated_delay

    @property
    def mean_boundary_change(self) -> float | None:
        """Mean absolute action change at chunk hand-overs (None before the second chunk)."""
        return float(np.mean(self.boundary_changes)) if self.boundary_changes else None

    @property
    def mean_step_change(self) -> float | None:
        return float(np.mean(self.step_changes)) if self.step_changes else None

    @property
    def mean_within_chunk_change(self) -> float | None:
        """Mean absolute action change at the steps that are not hand-overs: the floor a
        hand-over can reach, since the new chunk is matched to what the old one planned."""
        return float(np.mean(self.within_chunk_changes)) if self.within_chunk_changes else None

    @property
    def mean_handover_q_spread(self) -> float | None:
        """Mean max - min of the candidates' Q at the hand-overs the server scored (None: none)."""
        return float(np.mean(self.handover_q_spreads)) if self.handover_q_spreads else None

    def _control_option(self) -> dict[str, Any]:
        """The request's session and hand-over values (docs/control-loop.md), as ``control=``."""
        control = dict(self._session)
        if self._new_episode and self._in_session:  # a WebSocket's session is its connection
            control["sequence_start" if "sequence_id" in control else "reset"] = True
        if self._handover["handover_weight"] or self._handover["pin_delay"]:
            control.update({k: v for k, v in self._handover.items() if v is not None})
            if self._plan:  # the unexecuted rest of the chunk, and how much of it ran
                control.update(previous_chunk=np.stack(self._plan), execute_steps=self._executed)
        return {"control": control} if control else {}

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
        """Start a new episode: the rest of the chunk is dropped, so the next call asks the server,
        and a miss before the first answer returns the hold action again."""
        self._plan.clear()
        self._executed = self._takeover = 0
        self._last_action = self.hold_action
        self._new_episode = self._in_session
        self._episode_steps = 0

    def _chunk_of(self, answer: Inference) -> np.ndarray:
        chunk = answer.chunks[0]
        expected = (self.action_horizon, self.metadata.action_dim)
        if chunk.shape != expected:
            raise ServerError(
                f"model {self.metadata.name!r} answered actions of shape {answer.actions.shape[1:]}, "
                f"expected {expected if self.action_horizon > 1 else expected[1:]} (action_horizon "
                f"{self.action_horizon}, action_dim {self.metadata.action_dim})"
            )
        return chunk

    def _check_replan_every(self, replan_every: int | None) -> int:
        if replan_every is None:
            return self.action_horizon
        if not 1 <= replan_every <= self.action_horizon:
            raise ValueError(
                f"replan_every must be between 1 and model {self.metadata.name!r}'s action horizon "
                f"{self.action_horizon}; got {replan_every}"
            )
        return int(replan_every)

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


def _session_keys(client: Any) -> dict[str, Any]:
    """How this client's requests name their session: a WebSocket connection is one already."""
    if not isinstance(client, PolicyClient):
        return {}
    if client.protocol == "v2":
        return {"sequence_id": uuid.uuid4().int % 2**53 or 1}
    return {"session_id": uuid.uuid4().hex}
