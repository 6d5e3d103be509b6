"""Every option of `mfql-serve`, in one typed model: defaults, `MFQL_*` environment variables, CLI flags.

Precedence: command-line flag > environment variable (`MFQL_MAX_BATCH_SIZE=64`) > default.
The CLI (`server/cli.py`) is generated from these fields, so a new option needs no other edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The embedded default repository shipped as package data: server/default_model/<name>/<version>/.
EMBEDDED_REPOSITORY = Path(__file__).resolve().parent / "default_model"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MFQL_", frozen=True, extra="forbid", protected_namespaces=()
    )

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes the server to the network")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    model_repository: Path | None = Field(
        None, description="DIR/<model-name>/<version>/ bundles; default: the embedded server/default_model/"
    )
    default_model: str | None = Field(
        None,
        description="model served by /v1/act and ws://.../ (default: the only model, else first by name)",
    )
    api_key_file: Path | None = Field(
        None,
        description="file with one API key per line; when set, every route but health and metrics needs one",
    )
    max_batch_size: int = Field(256, ge=1, description="a batch closes at this many observations")
    max_queue_delay_us: int = Field(
        0,
        ge=0,
        description="optional: let a batch wait up to this long after its first request for fuller batches "
        "(0: whatever is queued runs as soon as the runtime is free)",
    )
    inline_below_us: int = Field(
        250,
        ge=0,
        description="a small lone request (runtime idle, nothing queued, at most 32 candidate rows, no queue delay) runs at once "
        "on the event loop when such requests have been measured to take less than this; it skips two thread "
        "hand-overs, and blocks the loop for at most about that long (0: always on the inference thread)",
    )
    max_queue_size: int = Field(
        1024, ge=1, description="observations queued per model version before requests get 503"
    )
    mixed_candidates: Literal["group", "pad"] = Field(
        "group",
        description="requests with different K in one batch: run each K as its own call (measured faster "
        "on the reference MLP), or pad every row to the batch's largest K with copies of its own noise",
    )
    backend: Literal["onnx", "torchscript"] = Field(
        "onnx", description="onnx (ONNX Runtime, torch-free) or torchscript (imports torch)"
    )
    providers: str | None = Field(
        None, description="comma-separated ONNX Runtime providers in priority order (default: GPU if usable)"
    )
    intra_op_threads: int = Field(
        1, ge=0, description="threads inside one operator (0: ONNX Runtime decides)"
    )
    inter_op_threads: int = Field(1, ge=0, description="threads across operators (0: ONNX Runtime decides)")
    allow_spinning: bool = Field(
        False, description="let idle ONNX Runtime threads spin-wait (burns CPU between requests)"
    )
    denormal_as_zero: bool = Field(True, description="flush float32 denormals to zero in ONNX Runtime")
    repository_poll_s: float = Field(
        5.0, ge=0, description="seconds between model repository scans for hot reload (0: only on request)"
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest request body or WebSocket message accepted"
    )
    default_deadline_ms: float | None = Field(
        None, gt=0, description="deadline for requests that name none (None: no deadline)"
    )
    latency_target_ms: float | None = Field(
        None,
        gt=0,
        description="lower K (down to 1) for requests that name none when the measured queue + inference "
        "time would miss this many ms (None: always the model's default K)",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, longest wait for queued and in-flight requests to finish"
    )
    max_sessions: int = Field(
        1024, ge=1, description="sessions open at once (all protocols); one more is refused with 503"
    )
    session_idle_s: float = Field(
        300.0,
        gt=0,
        description="a REST or v2 session unused this long ends (a WebSocket one ends with its connection)",
    )
    record_dir: Path | None = Field(
        None,
        description="record every served step of each session here, one JSON Lines file per episode "
        "(None: no recording)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    access_log: bool = Field(False, description="log every HTTP request (uvicorn access log)")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("providers")
    @classmethod
    def _names_a_provider(cls, value: str | None) -> str | None:
        if value is not None and not [p for p in value.split(",") if p.strip()]:
            raise ValueError("providers must name at least one ONNX Runtime execution provider")
        return value

    @model_validator(mode="after")
    def _files_exist(self) -> ServerSettings:
        if self.api_key_file is not None and not self.api_key_file.is_file():
            raise ValueError(f"api_key_file {self.api_key_file} does not exist")
        return self

    @property
    def repository_path(self) -> Path:
        return self.model_repository if self.model_repository is not None else EMBEDDED_REPOSITORY

    @property
    def provider_list(self) -> list[str] | None:
        if self.providers is None:
            return None
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_us / 1e6

    @property
    def inline_below_s(self) -> float:
        return self.inline_below_us / 1e6
