"""The robot's control loop on the server: sessions, hand-overs, action limits, clock echo, recording.

Every protocol reads its request's control values into one `Control` (`read_control`), maps
its own id onto a session of the `SessionStore`, and calls `ControlLoop.act`, which wraps
`ModelVersion.act` the way openpi's recorder wraps a policy: the policy and the batcher know
nothing of sessions. A request with no control value, no session and a model without limits
never comes here (the routes call `ModelVersion.act` directly: today's hot path).

`extra` of each answer (only the keys that apply): `session_id`, `episode`, `step` (the
session's answers before this one in its episode), `action_clamped` and `clamped_steps`,
`handover` {`delay_steps`, `execute_steps`, `candidate`, `distance`, `q_spread`}, `clock`
{`client_time`, `client_step`, `server_received`, `server_sent`} (seconds since the epoch).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.action_limits import session_limits
from server.errors import InvalidInput
from server.handover import (
    HANDOVER_SCALES,
    Handover,
    choose,
    estimate_delay,
    estimate_executed,
    handover_distance,
    pinned,
    q_spread,
)
from server.recording import EpisodeRecorder, episode_path
from server.served_model import ActRequest, ActResult, ModelVersion
from server.sessions import Session

OPTION_KEYS = (
    "handover_weight",
    "handover_scale",
    "delay_steps",
    "execute_steps",
    "pin_delay",
    "action_low",
    "action_high",
    "max_action_delta",
)
CONTROL_KEYS = ("reset", "previous_chunk", "client_time", "client_step", *OPTION_KEYS)


@dataclass(frozen=True)
class Control:
    """A request's control values, type-checked (shapes are checked against the model later)."""

    reset: bool = False
    previous_chunk: Any = None  # the previous chunk's unexecuted rest [r, action_dim]
    handover_weight: float | None = None
    handover_scale: str | None = None  # "q" (lambda in units of Q) or "spread" (of the candidates' Q)
    delay_steps: int | None = None
    execute_steps: int | None = None
    pin_delay: bool | None = None
    action_low: Any = None
    action_high: Any = None
    max_action_delta: Any = None
    client_time: float | None = None
    client_step: int | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The values a session remembers when they come with its start or reset."""
        return {key: getattr(self, key) for key in OPTION_KEYS if getattr(self, key) is not None}


def read_control(values: Mapping[str, Any]) -> Control | None:
    """A WebSocket message's or v2 parameters' control values; None when there are none. 422 when wrong."""
    present = {key: values[key] for key in CONTROL_KEYS if values.get(key) is not None}
    if not present:
        return None
    checks = {
        "reset": _boolean,
        "pin_delay": _boolean,
        "handover_weight": lambda v, n: _number(v, n, minimum=0.0),
        "handover_scale": lambda v, n: _choice(v, n, HANDOVER_SCALES),
        "client_time": _number,
        "delay_steps": lambda v, n: _integer(v, n, minimum=0),
        "execute_steps": lambda v, n: _integer(v, n, minimum=1),
        "client_step": lambda v, n: _integer(v, n, minimum=0),
    }
    return Control(**{key: checks.get(key, _as_is)(value, key) for key, value in present.items()})


class ControlLoop:
    def __init__(self, metrics, record_dir: Path | None):
        self.metrics = metrics
        self.record_dir = record_dir

    async def act(
        self,
        model: ModelVersion,
        request: ActRequest,
        control: Control | None,
        session: Session | None,
        *,
        seed_given: bool,
        received: float,
    ) -> tuple[ActResult, dict[str, Any]]:
        control = control or Control()
        if session is None:
            return await self._act(model, request, control, None, received)
        if request.observations.shape[0] != 1:
            raise InvalidInput("observations: a session is one robot; send one 'observation' per request")
        async with session.lock:
            if not seed_given:
                request = dataclasses.replace(request, seed=session.next_seed())
            return await self._act(model, request, control, session, received)

    async def _act(
        self,
        model: ModelVersion,
        request: ActRequest,
        control: Control,
        session: Session | None,
        received: float,
    ) -> tuple[ActResult, dict[str, Any]]:
        options = session.options if session is not None else None
        handover = _handover(control, options)
        executed = _executed(model, control, session, received)
        given = None if control.previous_chunk is None else _check_rest(control.previous_chunk, model)
        rest = _rest(model, given, session, executed) if handover.on else None
        if rest is not None and request.observations.shape[0] != 1:
            raise InvalidInput("previous_chunk: a hand-over needs one 'observation', not a batch")
        delay = handover.delay_steps
        if delay is None:
            delay = estimate_delay(model.mean_total_ms, model.bundle.metadata.control_period_s)
        recorder = self._recorder(session)
        chose_by_distance = rest is not None and handover.weight > 0
        if chose_by_distance or recorder is not None:
            result = await model.act_scored(request, received)
        else:
            result = await model.act(request, received)
        chunks = result.actions if model.action_horizon > 1 else result.actions[:, None]
        q_values, extra = result.q_values, {}
        policy_choice = chosen = None
        if result.candidate_q_values is not None:
            policy_choice = chosen = int(np.argmax(result.candidate_q_values[0]))
        if chose_by_distance:
            candidates = _as_chunks(result.candidates[0], model)
            distance = handover_distance(candidates, rest, delay)
            chosen = choose(result.candidate_q_values[0], distance, handover.weight, handover.scale)
            chunks = candidates[chosen][None]
            q_values = result.candidate_q_values[:, chosen]
            extra["handover"] = {
                "delay_steps": delay,
                "execute_steps": executed,
                "candidate": chosen,
                "distance": float(distance[chosen]),
                "q_spread": q_spread(result.candidate_q_values[0]),
            }
        if rest is not None and handover.pin:
            chunks = pinned(chunks[0], rest, delay)[None]
            extra.setdefault("handover", {"delay_steps": delay, "execute_steps": executed})
        chunks = self._limit(model, chunks, control, session, executed, extra)
        actions = chunks if model.action_horizon > 1 else chunks[:, 0]
        result = dataclasses.replace(result, actions=actions, q_values=q_values)
        if session is not None:
            extra.update(session_id=session.id, episode=session.episode, step=session.step)
            if recorder is not None:
                recorder.write(
                    _step_record(session, request, result, control, received, policy_choice, chosen, extra)
                )
            session.last_chunk, session.served_at = chunks[0], time.perf_counter()
            session.step += 1
            if control.client_step is not None:
                session.last_client_step = control.client_step
        if control.client_time is not None or control.client_step is not None:
            extra["clock"] = _clock(control, received)
        return result, extra

    def _limit(self, model, chunks, control: Control, session, executed, extra) -> np.ndarray:
        options = session.options if session is not None else None
        requested = session_limits(
            model.action_dim,
            _first(control.action_low, options and options.action_low),
            _first(control.action_high, options and options.action_high),
            _first(control.max_action_delta, options and options.max_action_delta),
        )
        limits = model.limits.narrowed(requested)
        if not limits.active:
            return chunks
        previous = None
        if (
            session is not None
            and session.last_chunk is not None
            and session.last_chunk.shape == chunks.shape[1:]
        ):
            previous = session.last_chunk[(executed or len(session.last_chunk)) - 1]
        limited, totals = [], {"rate": 0, "bound": 0}
        for chunk in chunks:
            out, counts = limits.apply(chunk, previous)
            limited.append(out)
            for kind, count in counts.items():
                totals[kind] += count
        self.metrics.record_clamps(model.name, totals)
        extra.update(action_clamped=any(totals.values()), clamped_steps=totals)
        return np.stack(limited)

    def _recorder(self, session: Session | None) -> EpisodeRecorder | None:
        if self.record_dir is None or session is None or not session.options.record:
            return None
        if session.recorder is None:
            session.recorder = EpisodeRecorder(episode_path(self.record_dir, session.key, session.episode))
        return session.recorder


def _handover(control: Control, options) -> Handover:
    return Handover(
        weight=_first(control.handover_weight, options and options.handover_weight) or 0.0,
        scale=_first(control.handover_scale, options and options.handover_scale) or "q",
        delay_steps=_first(control.delay_steps, options and options.delay_steps),
        execute_steps=_first(control.execute_steps, options and options.execute_steps),
        pin=bool(_first(control.pin_delay, options and options.pin_delay)),
    )


def _executed(model: ModelVersion, control: Control, session: Session | None, received: float) -> int | None:
    """Steps of the session's last chunk the client executed: told (s), from its step index, or from the time."""
    horizon = model.action_horizon
    options = session.options if session is not None else None
    told = _first(control.execute_steps, options and options.execute_steps)
    if told is not None:
        return min(told, horizon)
    if session is None or session.served_at is None:
        return None
    if control.client_step is not None and session.last_client_step is not None:
        return min(max(control.client_step - session.last_client_step, 1), horizon)
    return estimate_executed(received - session.served_at, model.bundle.metadata.control_period_s, horizon)


def _rest(model: ModelVersion, given, session: Session | None, executed: int | None):
    """The previous chunk's unexecuted rest [r, d]: the request's, else the session's last chunk after s steps."""
    if given is not None:
        return given
    if session is None or session.last_chunk is None or executed is None:
        return None
    if session.last_chunk.shape != (model.action_horizon, model.action_dim):
        return None  # the session moved to a model of another shape: nothing to hand over from
    rest = session.last_chunk[executed:]
    return rest if len(rest) else None


def _check_rest(value: Any, model: ModelVersion) -> np.ndarray:
    expected = f"[r, {model.action_dim}] with 1 <= r <= {model.action_horizon}"
    try:
        rest = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"previous_chunk: expected numbers of shape {expected} ({exc})") from exc
    if rest.ndim == 3 and rest.shape[0] == 1:
        rest = rest[0]  # v2 tensors carry a batch axis
    if rest.ndim == 1 and model.action_horizon == 1:
        rest = rest[None]
    if rest.ndim != 2 or rest.shape[1] != model.action_dim or not 1 <= rest.shape[0] <= model.action_horizon:
        raise InvalidInput(f"previous_chunk: expected shape {expected}, got {list(rest.shape)}")
    if not np.isfinite(rest).all():
        raise InvalidInput("previous_chunk: contains NaN or inf")
    return rest


def _as_chunks(candidates: np.ndarray, model: ModelVersion) -> np.ndarray:
    return candidates if model.action_horizon > 1 else candidates[:, None]


def _clock(control: Control, received: float) -> dict[str, Any]:
    now_wall, now = time.time(), time.perf_counter()
    return {
        "client_time": control.client_time,
        "client_step": control.client_step,
        "server_received": now_wall - (now - received),
        "server_sent": now_wall,
    }


def _step_record(session, request, result, control, received, policy_choice, chosen, extra) -> dict[str, Any]:
    """One line of a recording (docs/control-loop.md lists the keys)."""
    return {
        "episode_index": session.episode,
        "frame_index": session.step,
        "timestamp": time.time() - (time.perf_counter() - received),
        "session_id": session.id,
        "client_time": control.client_time,
        "client_step": control.client_step,
        "observation.state": request.observations[0],
        "action": result.actions[0],
        "q_value": float(result.q_values[0]),
        "policy_candidate": policy_choice,
        "chosen_candidate": chosen,
        "candidates": result.candidates[0],
        "candidate_q_values": result.candidate_q_values[0],
        "seed": result.seed,
        "num_candidates": result.num_candidates,
        "model": result.model,
        "version": result.version,
        "action_horizon": result.action_horizon,
        "timing_ms": result.timing_ms,
        **{key: extra[key] for key in ("handover", "action_clamped", "clamped_steps") if key in extra},
    }


def _first(value, fallback):
    return value if value is not None else fallback


def _as_is(value: Any, name: str) -> Any:
    return value


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInput(f"{name}: expected true or false, got {value!r}")
    return bool(value)


def _number(value: Any, name: str, minimum: float | None = None) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInput(f"{name}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise InvalidInput(f"{name}: expected a finite number{bound}, got {value!r}")
    return number


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInput(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _integer(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInput(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)
