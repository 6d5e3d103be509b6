"""Per-robot sessions: the one home of state that outlives a request.

Each protocol maps its own id onto this store: a WebSocket connection (`ws:<uuid>`), a REST
`session_id` (`rest:<id>`) and a v2 `sequence_id` (`v2:<id>`), as Triton's sequence batcher
keeps its state in one place. A session holds its episode and step counters, the last chunk
it was served and when, the client's last step index, its seed stream, its options (hand-over,
limits) and, with `--record-dir`, the open recording of its episode.

Idle sessions expire after `--session-idle-s` (a WebSocket session lives as long as its
connection instead); at most `--max-sessions` are open, and one more is refused with 503 and a
`Retry-After` of the time until the oldest idle one expires. The store lives on the event
loop; a session's own lock serves its requests one at a time, in arrival order, so one robot's
concurrent requests cannot interleave their state, and no session ever touches another's.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import SessionsFull, UnknownSession
from server.noise import fresh_seed, stream_seed


@dataclass
class SessionOptions:
    """What a session remembers between requests; a request's own values override them once."""

    handover_weight: float = 0.0
    handover_scale: str = "q"
    delay_steps: int | None = None
    execute_steps: int | None = None
    pin_delay: bool = False
    action_low: Any = None  # one number or [action_dim], checked against the model serving each request
    action_high: Any = None
    max_action_delta: Any = None
    record: bool = True  # with --record-dir; False keeps this session out of the recordings

    def updated(self, values: dict[str, Any]) -> SessionOptions:
        known = {k: v for k, v in values.items() if k in self.__dataclass_fields__ and v is not None}
        return SessionOptions(**{**self.__dict__, **known})


@dataclass
class Session:
    key: str  # "<protocol>:<id>"
    seed: int  # base of the seed stream
    options: SessionOptions = field(default_factory=SessionOptions)
    pinned: bool = False  # a WebSocket session: lives as long as its connection, never expires
    episode: int = 0
    step: int = 0  # answers served in this episode
    last_chunk: np.ndarray | None = None  # [H, d] as served (after hand-over and limits)
    served_at: float | None = None  # perf_counter() when the last chunk was sent
    last_client_step: int | None = None
    last_used: float = field(default_factory=time.monotonic)
    recorder: Any = None  # recording.EpisodeRecorder of the current episode, with --record-dir
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def id(self) -> str:
        return self.key.split(":", 1)[1]

    def next_seed(self) -> int:
        return stream_seed(self.seed, self.episode, self.step)

    def new_episode(self) -> None:
        self.episode += 1
        self.step = 0
        self.last_chunk = self.served_at = self.last_client_step = None
        self.close_recording()

    def close_recording(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

    def describe(self) -> dict[str, Any]:
        return {"session_id": self.id, "episode": self.episode, "step": self.step, "seed": self.seed}


class SessionEvents:
    """What a store reports; the default reports nothing (metrics.py has the Prometheus one)."""

    def opened(self, active: int) -> None: ...

    def closed(self, active: int, reason: str) -> None: ...  # "ended", "expired", "disconnected"

    def reset(self) -> None: ...

    def refused(self) -> None: ...


class SessionStore:
    def __init__(self, max_sessions: int, idle_s: float, events: SessionEvents | None = None):
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self.events = events or SessionEvents()
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: str) -> Session:
        session = self._sessions.get(key)
        if session is None or self._expired(session, time.monotonic()):
            if session is not None:
                self.close(key, "expired")
            raise UnknownSession(
                f"session {key.split(':', 1)[1]!r} is not open (never opened, ended, or idle for more "
                f"than {self.idle_s:g} s); open it again"
            )
        session.last_used = time.monotonic()
        return session

    def open(
        self,
        key: str,
        *,
        seed: int | None = None,
        options: SessionOptions | None = None,
        pinned: bool = False,
    ) -> Session:
        """A new session under `key` (replacing one of that key); SessionsFull when the store is full."""
        if key in self._sessions:
            self.close(key, "ended")
        if len(self._sessions) >= self.max_sessions:
            self.sweep()
        if len(self._sessions) >= self.max_sessions:
            self.events.refused()
            raise SessionsFull(
                f"{len(self._sessions)} sessions are open, the limit is {self.max_sessions} "
                "(--max-sessions); end one or retry when an idle one expires",
                retry_after=self._seconds_until_one_expires(),
            )
        session = Session(key, fresh_seed() if seed is None else seed, options or SessionOptions(), pinned)
        self._sessions[key] = session
        self.events.opened(len(self._sessions))
        return session

    def get_or_open(self, key: str) -> tuple[Session, bool]:
        """The open session of `key`, or a new one (REST and v2: created on first use)."""
        try:
            return self.get(key), False
        except UnknownSession:
            return self.open(key), True

    def reset(self, session: Session, options: dict[str, Any] | None = None) -> None:
        """Start the next episode; an episode that served nothing yet is kept (only its options change),
        so a client that resets before its first step starts at episode 0."""
        if options:
            session.options = session.options.updated(options)
        if session.step == 0:
            return
        session.new_episode()
        self.events.reset()

    def close(self, key: str, reason: str = "ended") -> Session | None:
        session = self._sessions.pop(key, None)
        if session is not None:
            session.close_recording()
            self.events.closed(len(self._sessions), reason)
        return session

    def sweep(self) -> int:
        """End every session idle for longer than `idle_s`; returns how many."""
        now = time.monotonic()
        expired = [key for key, s in self._sessions.items() if self._expired(s, now)]
        for key in expired:
            self.close(key, "expired")
        return len(expired)

    def close_all(self) -> None:
        for key in list(self._sessions):
            self.close(key, "ended")

    def _expired(self, session: Session, now: float) -> bool:
        return not session.pinned and now - session.last_used > self.idle_s

    def _seconds_until_one_expires(self) -> int:
        idle = [s.last_used for s in self._sessions.values() if not s.pinned]
        if not idle:
            return max(1, math.ceil(self.idle_s))
        return max(1, math.ceil(min(idle) + self.idle_s - time.monotonic()))


async def sweep_forever(store: SessionStore) -> None:
    """Expire idle sessions even when no request comes (so the active-sessions gauge is true)."""
    interval = min(max(store.idle_s / 4, 0.05), 5.0)
    while True:
        await asyncio.sleep(interval)
        store.sweep()
