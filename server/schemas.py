"""Native REST request and response bodies (they also document `/docs`).

Shape checks that depend on the model (obs_dim, K limits) happen in `ModelVersion.check_request`,
the same code the v2 and WebSocket protocols go through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from server.errors import InvalidInput, MalformedRequest
from server.noise import SEED_LIMIT

FLOAT32_MAX = 3.4028234663852886e38
# The schema says what the server takes: finite float32 values. The check itself stays in
# `ModelVersion.check_observations`, shared with v2 and the WebSocket, which names the index.
Float32 = Annotated[
    float, WithJsonSchema({"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX})
]
VERSION_LIMIT = 10**18  # repository.VERSION_PATTERN: up to 18 digits
Version = Annotated[int, Field(ge=1, lt=VERSION_LIMIT)] | Annotated[str, Field(pattern=r"^[1-9][0-9]{0,17}$")]


SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
STEP_LIMIT = 2**31  # steps of a chunk, of delay: int32; exact as a JSON double too
COUNTER_LIMIT = 2**53  # a client's step index and a session's base seed: exact as JSON doubles
SessionId = Annotated[str, Field(pattern=SESSION_ID_PATTERN)]
BoundedFloat = Annotated[float, Field(strict=True, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
PerDimension = list[BoundedFloat] | BoundedFloat  # one value for every action dimension, or action_dim values
PositivePerDimension = (
    list[Annotated[float, Field(strict=True, gt=0, le=FLOAT32_MAX)]]
    | Annotated[float, Field(strict=True, gt=0, le=FLOAT32_MAX)]
)


def _whole_number(value: Any) -> Any:
    """JSON integers, also written as 3.0 (JSON Schema's integers include them); never true/false or "3"."""
    if isinstance(value, (bool, str)):
        raise ValueError("expected an integer")
    return value


# Integers as JSON Schema means them (948433.0 is one; booleans and strings are not), with their
# bounds inside the type so that the OpenAPI schema states them as minimum / exclusiveMaximum.
DelaySteps = Annotated[int, Field(ge=0, lt=STEP_LIMIT), BeforeValidator(_whole_number)]
ExecuteSteps = Annotated[int, Field(ge=1, lt=STEP_LIMIT), BeforeValidator(_whole_number)]
Counter = Annotated[int, Field(ge=0, lt=COUNTER_LIMIT), BeforeValidator(_whole_number)]


class SessionOptionsBody(BaseModel):
    """Per-session options (docs/control-loop.md); in an act request they apply to that request only,
    unless it starts the session or an episode (first use, `reset`), which then keeps them."""

    model_config = ConfigDict(extra="forbid")

    handover_weight: float | None = Field(
        None,
        strict=True,
        ge=0,
        le=FLOAT32_MAX,
        description="lambda: candidates score Q - lambda x distance to the previous chunk's rest (0: off)",
    )
    handover_scale: Literal["q", "spread"] | None = Field(
        None,
        description="units of lambda: 'q' (default; lambda in units of Q) or 'spread' (lambda x the "
        "max - min of the candidates' Q: one value works whatever the reward's scale)",
    )
    delay_steps: DelaySteps | None = Field(
        None,
        description="d: control steps the answer takes (default: estimated from measured latency)",
    )
    execute_steps: ExecuteSteps | None = Field(
        None,
        description="s: steps of the previous chunk executed before this request",
    )
    pin_delay: StrictBool | None = Field(
        None, strict=True, description="copy the previous chunk's first d rest actions into the answer"
    )
    action_low: PerDimension | None = Field(None, description="lower bounds (one value or action_dim values)")
    action_high: PerDimension | None = Field(
        None, description="upper bounds (one value or action_dim values)"
    )
    max_action_delta: PositivePerDimension | None = Field(
        None, description="largest change of each action dimension per control step"
    )


class ActBody(SessionOptionsBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"observation": [0.1, -0.2, 0.3], "num_candidates": 4, "seed": 7}],
            "oneOf": [{"required": ["observation"]}, {"required": ["observations"]}],
        },
    )

    # Not nullable: exactly one of the two is sent (the schema's oneOf, the validator below).
    observation: list[Float32] = Field(None, min_length=1, description="one observation [obs_dim]")
    observations: list[Annotated[list[Float32], Field(min_length=1)]] = Field(
        None, min_length=1, description="a batch of observations [B, obs_dim]"
    )
    num_candidates: int | None = Field(
        None, ge=1, description="K candidates to score, 1..max_num_candidates (default: the model's)"
    )
    seed: int | None = Field(
        None, ge=0, lt=SEED_LIMIT, description="noise seed; same seed + model + observation -> same action"
    )
    version: Version | None = Field(None, description="model version (default: the newest ready one)")
    deadline_ms: float | None = Field(
        None, gt=0, description="drop the request (504) if inference cannot start within this many ms"
    )

    session_id: SessionId | None = Field(
        None,
        strict=True,
        description="the robot's session, created on first use (POST /v1/sessions creates one explicitly)",
    )
    reset: StrictBool | None = Field(
        None, description="with session_id: start a new episode with this request"
    )
    previous_chunk: list[Annotated[list[Float32], Field(min_length=1)]] | None = Field(
        None,
        strict=True,
        min_length=1,
        description="the previous chunk's unexecuted rest [r, action_dim], for the hand-over",
    )
    client_time: float | None = Field(
        None,
        strict=True,
        ge=-FLOAT32_MAX,
        le=FLOAT32_MAX,
        description="the client's clock (seconds), echoed in `clock`",
    )
    client_step: Counter | None = Field(
        None,
        description="the client's control step index, echoed in `clock`",
    )

    @model_validator(mode="after")
    def _one_kind_of_observation(self) -> ActBody:
        if (self.observation is None) == (self.observations is None):
            raise ValueError("send exactly one of 'observation' [obs_dim] or 'observations' [B, obs_dim]")
        return self


def parse_act_body(raw: bytes) -> ActBody:
    """The body, validated in one pass of pydantic-core (no FastAPI body machinery on the hot path)."""
    try:
        return ActBody.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise MalformedRequest(f"body is not JSON: {errors[0]['msg']}") from exc
        raise InvalidInput(validation_message(errors)) from exc


def validation_message(errors: list[Any]) -> str:
    """pydantic's errors as one line: `field: problem; field: problem`."""
    problems = []
    for error in errors:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append(f"{location}: {error['msg']}" if location else str(error["msg"]))
    return "; ".join(problems)


class ErrorBody(BaseModel):
    error: str = Field(description="what was expected and what was received")


ERROR_DESCRIPTIONS = {
    400: "unreadable body (not JSON, broken binary framing)",
    401: "missing or invalid API key (only with --api-key-file)",
    404: "unknown model or version (the message lists what exists), or a session that is not open",
    413: "body larger than --max-request-bytes",
    422: "a value is wrong: shape, NaN/inf, K out of range, seed, version, session_id, a control value "
    "(previous_chunk's shape, action limits' sizes, low > high, a batch in a session)",
    500: "the runtime failed on this batch",
    503: "queue full, still loading, shutting down, or --max-sessions sessions open (Retry-After says when to retry)",
    504: "the deadline passed before inference started; nothing was computed",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer, all `{"error": ...}`."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


class TimingMs(BaseModel):
    queue: float = Field(description="waiting for a batch to start")
    inference: float = Field(description="the batch's runtime call")
    total: float = Field(description="request parsed to answer ready")


class Clock(BaseModel):
    client_time: float | None = Field(description="as sent")
    client_step: int | None = Field(description="as sent")
    server_received: float = Field(
        description="server's clock (seconds since the epoch) when the request arrived"
    )
    server_sent: float = Field(description="server's clock when the answer was ready to send")


class SessionState(BaseModel):
    session_id: str
    episode: int = Field(description="from 0; each reset starts the next")
    step: int = Field(description="answers served in this episode")
    seed: int = Field(description="base of the session's seed stream: requests without a seed draw from it")


class SessionBody(SessionOptionsBody):
    model_config = ConfigDict(extra="forbid")

    session_id: SessionId | None = Field(
        None, strict=True, description="the id to use (default: a new random one)"
    )
    seed: Counter | None = Field(None, description="base of the seed stream (default: fresh)")
    record: StrictBool | None = Field(
        None, description="with --record-dir: false keeps this session out of it"
    )


Action = list[float]  # [action_dim]
Chunk = list[Action]  # [H, action_dim]: actions for H consecutive control steps


class ActResponse(BaseModel):
    action: Action | Chunk | None = Field(
        None,
        description="for one observation: [action_dim], or [H, action_dim] from a chunked model "
        "(action_horizon H > 1), the actions for the next H control steps",
    )
    q_value: float | None = Field(None, description="critic value of the action (of the whole chunk)")
    actions: list[Action] | list[Chunk] | None = Field(
        None, description="for a batch of observations: [B, action_dim], or [B, H, action_dim] when chunked"
    )
    q_values: list[float] | None = None
    action_horizon: int = Field(
        ge=1, description="actions per observation: 1 (one action), or the chunk length H"
    )
    num_candidates: int
    model: str
    version: str
    seed: int = Field(description="the seed used (fresh when none was sent): send it back to replay")
    timing_ms: TimingMs
    session_id: str | None = Field(None, description="the session answered (with session_id)")
    episode: int | None = Field(None, description="the session's episode, from 0; reset starts the next")
    step: int | None = Field(None, description="answers the session served before this one in its episode")
    action_clamped: bool | None = Field(
        None, description="an action limit changed the answer (when limits apply)"
    )
    clamped_steps: dict[str, int] | None = Field(
        None, description="steps changed by each limit: rate (max change per step) and bound"
    )
    handover: dict[str, float | int | None] | None = Field(
        None, description="the hand-over used: delay_steps, execute_steps, candidate, distance"
    )
    clock: Clock | None = Field(None, description="with client_time or client_step: the clock echo")


class ModelDescription(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str = Field(description="the version described (the serving one unless one was named)")
    versions: list[str]
    obs_dim: int
    action_dim: int = Field(description="size of one action (of each step of a chunk)")
    action_horizon: int = Field(
        ge=1, description="actions answered per observation: 1, or the chunk length H"
    )
    control_period_s: float | None = Field(
        description="seconds per control step (a chunk's actions are for consecutive steps); null: unknown"
    )
    action_low: list[float]
    action_high: list[float]
    default_num_candidates: int
    max_num_candidates: int
    provider: str = Field(description="execution provider of the runtime, e.g. CPUExecutionProvider")
    env_name: str | None
    success_rate: float | None
    training_step: int | None
    policy_type: str | None


class FailedVersion(BaseModel):
    version: str
    error: str


class ModelSummary(BaseModel):
    name: str
    versions: list[str]
    serving_version: str | None
    ready: bool
    default: bool
    loading: list[str]
    failed: list[FailedVersion]


class ModelListing(BaseModel):
    default: str | None = Field(description="the model /v1/act and ws://host:port/ serve")
    models: list[ModelSummary]


class ReloadReport(BaseModel):
    loaded: list[str]
    failed: list[str]
    unloaded: list[str]
