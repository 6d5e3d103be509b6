"""Request and response shapes of mfql's three protocols, as pure functions (no I/O).

Native REST (JSON), Open Inference Protocol v2 (JSON, KServe/Triton) and the openpi-style
WebSocket (msgpack via :mod:`clients.codec`) all carry the same thing: a batch of raw
observations in, one action (or, from a chunked model, one chunk of H actions) and its
critic value per observation out. Every transport in this package builds its requests and
reads its answers here, so the shapes live once.

Shapes per observation: ``[action_dim]`` from a model of action horizon 1, as before
chunking existed; ``[H, action_dim]`` from a chunked model (openpi's ``"actions"`` of shape
(H, D)). An answer's ``action_horizon`` key, when present, must agree with that shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.errors import InvalidInput, ServerError


@dataclass(frozen=True)
class ModelMetadata:
    """What a robot loop needs to know about a served model (the rest is in ``raw``)."""

    name: str
    obs_dim: int
    action_dim: int
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    default_num_candidates: int | None = None
    max_num_candidates: int | None = None
    versions: tuple[str, ...] = ()
    action_horizon: int = 1  # actions per answer (a chunk when > 1)
    control_period_s: float | None = None  # seconds per action of a chunk, if the bundle knows it
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_native(cls, payload: dict) -> ModelMetadata:
        """From ``GET /v1/models/{name}`` (or the WebSocket's on-connect metadata)."""
        try:
            return cls(
                name=str(payload["name"]),
                obs_dim=int(payload["obs_dim"]),
                action_dim=int(payload["action_dim"]),
                action_low=_optional_array(payload.get("action_low")),
                action_high=_optional_array(payload.get("action_high")),
                default_num_candidates=_optional_int(payload.get("default_num_candidates")),
                max_num_candidates=_optional_int(payload.get("max_num_candidates")),
                versions=tuple(str(v) for v in payload.get("versions") or ()),
                action_horizon=_horizon(payload.get("action_horizon")),
                control_period_s=_optional_float(payload.get("control_period_s")),
                raw=dict(payload),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ServerError(f"model metadata lacks a usable {exc} field: {_preview(payload)}") from exc

    @classmethod
    def from_v2(cls, payload: dict) -> ModelMetadata:
        """From v2 ``GET /v2/models/{name}``: dims come from the tensor shapes, bounds are unknown.

        The ``action`` output is ``[-1, action_dim]``, or ``[-1, H, action_dim]`` for a chunked model.
        """
        try:
            inputs = {t["name"]: t for t in payload["inputs"]}
            outputs = {t["name"]: t for t in payload["outputs"]}
            action_shape = outputs["action"]["shape"]
            return cls(
                name=str(payload["name"]),
                obs_dim=int(inputs["observation"]["shape"][-1]),
                action_dim=int(action_shape[-1]),
                versions=tuple(str(v) for v in payload.get("versions") or ()),
                action_horizon=int(action_shape[1]) if len(action_shape) == 3 else 1,
                raw=dict(payload),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ServerError(f"v2 model metadata lacks a usable {exc} field: {_preview(payload)}") from exc


@dataclass(frozen=True)
class Inference:
    """One answer: ``actions`` float32 and ``q_values`` [B], plus what the server reports.

    ``actions`` is [B, action_dim] from a model of action horizon 1 and [B, H, action_dim]
    from a chunked model; ``chunks`` is always [B, H, action_dim].
    """

    actions: np.ndarray
    q_values: np.ndarray
    num_candidates: int | None = None
    model: str | None = None
    version: str | None = None
    seed: int | None = None
    timing_ms: dict = field(default_factory=dict)
    # the control loop's answer, when it applies: session_id, episode, step, action_clamped,
    # clamped_steps, handover, clock (v2: sequence_id and the flat response parameters)
    control: dict = field(default_factory=dict)

    @property
    def action_horizon(self) -> int:
        return 1 if self.actions.ndim == 2 else int(self.actions.shape[1])

    @property
    def chunks(self) -> np.ndarray:
        """The actions as [B, H, action_dim] (H = 1 for a model that answers one action)."""
        return self.actions[:, None] if self.actions.ndim == 2 else self.actions


def observation_batch(observations: Any, single: bool) -> np.ndarray:
    """``observations`` as a finite float32 [B, obs_dim] array; refuses bad input before it is sent."""
    batch = np.asarray(observations, dtype=np.float32)
    expected_ndim = 1 if single else 2
    if batch.ndim != expected_ndim:
        what = "one observation [obs_dim]" if single else "a batch of observations [B, obs_dim]"
        raise InvalidInput(f"expected {what}, got an array of shape {batch.shape}")
    batch = batch.reshape(1, -1) if single else batch
    if batch.shape[0] == 0 or batch.shape[1] == 0:
        raise InvalidInput(f"observations must be non-empty, got shape {batch.shape}")
    bad = np.argwhere(~np.isfinite(batch))
    if len(bad):
        raise InvalidInput(
            f"observation contains NaN or inf (first at index {tuple(int(i) for i in bad[0])})"
        )
    return batch


CONTROL_ANSWER_KEYS = (
    "session_id",
    "episode",
    "step",
    "action_clamped",
    "clamped_steps",
    "handover",
    "clock",
)


def _control_answer(payload: dict) -> dict:
    return {key: payload[key] for key in CONTROL_ANSWER_KEYS if key in payload}


def _jsonable(control: dict | None) -> dict:
    return {
        k: (v.tolist() if isinstance(v, np.ndarray) else v)
        for k, v in (control or {}).items()
        if v is not None
    }


def _request_options(num_candidates: int | None, seed: int | None, deadline_ms: float | None) -> dict:
    options = {"num_candidates": num_candidates, "seed": seed, "deadline_ms": deadline_ms}
    return {key: value for key, value in options.items() if value is not None}


# ---- native REST --------------------------------------------------------------------------


def rest_act_path(model: str | None) -> str:
    return f"/v1/models/{model}/act" if model else "/v1/act"


def rest_act_body(
    batch: np.ndarray,
    single: bool,
    num_candidates: int | None = None,
    seed: int | None = None,
    version: str | None = None,
    deadline_ms: float | None = None,
    control: dict | None = None,
) -> dict:
    """``control``: session and control-loop values (docs/control-loop.md), e.g. ``session_id``,
    ``reset``, ``previous_chunk``, ``handover_weight``, ``client_time``."""
    body: dict[str, Any] = {"observation": batch[0].tolist()} if single else {"observations": batch.tolist()}
    body.update(_request_options(num_candidates, seed, deadline_ms))
    body.update(_jsonable(control))
    if version is not None:
        body["version"] = version
    return body


def parse_rest_act(payload: dict) -> Inference:
    try:
        if "actions" in payload:
            actions, q_values = payload["actions"], payload["q_values"]
        else:
            actions, q_values = [payload["action"]], [payload["q_value"]]
        return Inference(
            actions=_batched_actions(actions, payload.get("action_horizon")),
            q_values=np.asarray(q_values, dtype=np.float32).reshape(-1),
            num_candidates=_optional_int(payload.get("num_candidates")),
            model=payload.get("model"),
            version=_optional_str(payload.get("version")),
            seed=_optional_int(payload.get("seed")),
            timing_ms=dict(payload.get("timing_ms") or {}),
            control=_control_answer(payload),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"unreadable act response (missing {exc}): {_preview(payload)}") from exc


# ---- Open Inference Protocol v2 -----------------------------------------------------------


def v2_infer_path(model: str, version: str | None = None) -> str:
    return f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"


def v2_infer_body(
    batch: np.ndarray,
    num_candidates: int | None = None,
    seed: int | None = None,
    deadline_ms: float | None = None,
    control: dict | None = None,
) -> dict:
    """``control``: request parameters such as ``sequence_id``, ``sequence_start``, ``handover_weight``;
    a ``previous_chunk`` [r, action_dim] goes as an FP32 input."""
    control = dict(control or {})
    previous = control.pop("previous_chunk", None)
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "observation",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "action"}, {"name": "q_value"}],
    }
    if previous is not None:
        rest = np.asarray(previous, dtype=np.float32)
        body["inputs"].append(
            {
                "name": "previous_chunk",
                "shape": list(rest.shape),
                "datatype": "FP32",
                "data": rest.ravel().tolist(),
            }
        )
    parameters = {**_request_options(num_candidates, seed, deadline_ms), **_jsonable(control)}
    if parameters:
        body["parameters"] = parameters
    return body


def parse_v2_infer(payload: dict) -> Inference:
    try:
        outputs = {
            t["name"]: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"]) for t in payload["outputs"]
        }
        parameters = payload.get("parameters") or {}
        return Inference(
            actions=_batched_actions(outputs["action"], parameters.get("action_horizon")),
            q_values=outputs["q_value"].reshape(-1),
            num_candidates=_optional_int(parameters.get("num_candidates")),
            model=payload.get("model_name"),
            version=_optional_str(payload.get("model_version")),
            seed=_optional_int(parameters.get("seed")),
            timing_ms=_v2_timing(parameters),
            control={
                k: v
                for k, v in parameters.items()
                if k not in V2_PLAIN_PARAMETERS and not k.startswith("timing_ms_")
            },
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"unreadable v2 infer response ({exc}): {_preview(payload)}") from exc


V2_PLAIN_PARAMETERS = ("num_candidates", "seed", "action_horizon")


def _v2_timing(parameters: dict) -> dict:
    prefix = "timing_ms_"
    return {key[len(prefix) :]: value for key, value in parameters.items() if key.startswith(prefix)}


# ---- WebSocket (openpi-compatible, msgpack) ------------------------------------------------


def ws_request(
    batch: np.ndarray,
    single: bool,
    num_candidates: int | None = None,
    seed: int | None = None,
    control: dict | None = None,
) -> dict:
    message: dict[str, Any] = {"observation": batch[0] if single else batch}
    message.update(_request_options(num_candidates, seed, None))
    message.update({k: v for k, v in (control or {}).items() if v is not None})
    return message


def parse_ws_reply(reply: Any, single: bool) -> Inference:
    """The reply to one observation (``single``: ``actions`` [action_dim] or [H, action_dim]) or a batch."""
    try:
        actions = np.asarray(reply["actions"], dtype=np.float32)
        return Inference(
            actions=_batched_actions(actions[None] if single else actions, reply.get("action_horizon")),
            q_values=np.asarray(reply["q_values"], dtype=np.float32).reshape(-1),
            num_candidates=_optional_int(reply.get("num_candidates")),
            model=reply.get("model"),
            version=_optional_str(reply.get("version")),
            seed=_optional_int(reply.get("seed")),
            timing_ms=dict(reply.get("server_timing") or {}),
            control=_control_answer(reply),
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ServerError(f"unreadable WebSocket reply ({exc}): {_preview(reply)}") from exc


# ---- errors --------------------------------------------------------------------------------


def error_message(body: bytes) -> str:
    """The server's explanation from an error body: JSON ``error``/``detail``/``message``, else the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text or "no message"
    if isinstance(payload, dict):
        for key in ("error", "detail", "message"):
            if key in payload:
                return _flatten_detail(payload[key])
    return text


def _flatten_detail(detail: Any) -> str:
    # FastAPI validation errors: [{"loc": ["body", "observation"], "msg": "..."}, ...]
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                location = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{location}: {item['msg']}" if location else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return detail if isinstance(detail, str) else json.dumps(detail)


def _batched_actions(actions: Any, action_horizon: Any) -> np.ndarray:
    """[B, action_dim], or [B, H, action_dim] for H > 1, checked against the answer's ``action_horizon``."""
    array = np.asarray(actions, dtype=np.float32)
    if array.ndim not in (2, 3):
        raise ServerError(
            f"answered actions of shape {array.shape[1:]} per observation, expected [d] or [H, d]"
        )
    if array.ndim == 3 and array.shape[1] == 1:
        array = array[:, 0]  # a chunk of one action is the action: H = 1 answers keep one shape
    horizon = 1 if array.ndim == 2 else array.shape[1]
    if action_horizon is not None and int(action_horizon) != horizon:
        raise ServerError(
            f"answer says action_horizon={action_horizon} but carries {horizon} action(s) per observation"
        )
    return array


def _horizon(value: Any) -> int:
    horizon = 1 if value is None else int(value)  # absent: a model from before chunking, H = 1
    if horizon < 1:
        raise ServerError(f"model metadata has action_horizon={horizon}, expected an integer >= 1")
    return horizon


def _optional_array(value: Any) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float32)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _preview(payload: Any, limit: int = 300) -> str:
    text = repr(payload)
    return text if len(text) <= limit else text[:limit] + "..."
