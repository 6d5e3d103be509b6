"""Native REST request and response bodies (they also document `/docs`).

Shape checks that depend on the model (obs_dim, K limits) happen in `ModelVersion.check_request`,
the same code the v2 and WebSocket protocols go through.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

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


class ActBody(BaseModel):
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
    404: "unknown model or version; the message lists what exists",
    413: "body larger than --max-request-bytes",
    422: "a value is wrong: shape, NaN/inf, K out of range, seed, version",
    500: "the runtime failed on this batch",
    503: "queue full, still loading, or shutting down (Retry-After says when to retry)",
    504: "the deadline passed before inference started; nothing was computed",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer, all `{"error": ...}`."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


class TimingMs(BaseModel):
    queue: float = Field(description="waiting for a batch to start")
    inference: float = Field(description="the batch's runtime call")
    total: float = Field(description="request parsed to answer ready")


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
