"""Native REST request and response bodies (they also document `/docs`).

Shape checks that depend on the model (obs_dim, K limits) happen in `ModelVersion.check_request`,
the same code the v2 and WebSocket protocols go through.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.noise import SEED_LIMIT


class ActBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"observation": [0.1, -0.2, 0.3], "num_candidates": 4, "seed": 7}]},
    )

    observation: list[float] | None = Field(None, description="one observation [obs_dim]")
    observations: list[list[float]] | None = Field(None, description="a batch of observations [B, obs_dim]")
    num_candidates: int | None = Field(
        None, ge=1, description="K candidates to score, 1..max_num_candidates (default: the model's)"
    )
    seed: int | None = Field(
        None, ge=0, lt=SEED_LIMIT, description="noise seed; same seed + model + observation -> same action"
    )
    version: str | int | None = Field(None, description="model version (default: the newest ready one)")
    deadline_ms: float | None = Field(
        None, gt=0, description="drop the request (504) if inference cannot start within this many ms"
    )

    @model_validator(mode="after")
    def _one_kind_of_observation(self) -> ActBody:
        if (self.observation is None) == (self.observations is None):
            raise ValueError("send exactly one of 'observation' [obs_dim] or 'observations' [B, obs_dim]")
        return self


class TimingMs(BaseModel):
    queue: float = Field(description="waiting for a batch to start")
    inference: float = Field(description="the batch's runtime call")
    total: float = Field(description="request parsed to answer ready")


class ActResponse(BaseModel):
    action: list[float] | None = Field(None, description="for one observation")
    q_value: float | None = None
    actions: list[list[float]] | None = Field(None, description="for a batch of observations")
    q_values: list[float] | None = None
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
    action_dim: int
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
